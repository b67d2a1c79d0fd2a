"""The utility's approval (use case step 3, BR3): the vendor signs with its key directory, the
utility approves with its own, and a campaign takes only an image the utility approved, for
the field's boards without exception."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meterfw import campaign as C
from meterfw import fleet
from meterfw.errors import CommandError
from meterfw.image import Image, build_image, parse_image, verify_image
from meterfw.keys import KeysError, init_keys, load_keys
from meterfw.paths import FIRMWARE
from meterfw.store import Store

MFW = str(Path(sys.executable).parent / "meterfw")


@pytest.fixture(scope="module")
def orgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("orgs")
    init_keys(d / "vendor", "vendor")
    init_keys(d / "utility", "utility", d / "vendor" / "vendor.pub")
    image = d / "vendor-signed.mfw"
    image.write_bytes(build_image(FIRMWARE, "sim", "2.0.0", load_keys(d / "vendor")))
    return d, image


def test_the_two_key_directories_hold_each_organisation_s_own_keys(orgs):
    d, _ = orgs
    assert sorted(p.name for p in (d / "vendor").iterdir()) == ["vendor.key", "vendor.pub"]
    assert sorted(p.name for p in (d / "utility").iterdir()) == ["utility.key", "utility.pub", "utility.secret",
                                                               "vendor.pub"]
    with pytest.raises(KeysError, match="--vendor-pub"):
        init_keys(d / "nobody", "utility")


def test_a_campaign_takes_an_image_only_once_the_utility_approved_it(orgs, tmp_path):
    d, image = orgs
    keys = load_keys(d / "utility", private=False)
    img = Image.read(image)
    assert verify_image(img, keys.vendor_public_raw, keys.utility_public_raw, require_approval=True) == [
        "missing utility approval"]
    with Store(str(tmp_path / "office.db")) as store:
        fleet.import_meters(store, [fleet.FleetMeter("A1", "sim", "socket://127.0.0.1:1"),
                                    fleet.FleetMeter("P1", "pico", "socket://127.0.0.1:2")])
        with pytest.raises(CommandError, match="missing utility approval"):
            C.create(store, "c", {"sim": (str(image), img)}, fleet.Selection(), C.Policy(), keys)
        assert C.campaigns(store) == []  # nothing stored
        # A lab may run the sim board's images unapproved, never the field's boards'.
        C.create(store, "lab", {"sim": (str(image), img)}, fleet.Selection(), C.Policy(), keys,
                 require_approval=False)
        pico = build_image(FIRMWARE, "pico", "2.0.0", load_keys(d / "vendor"))
        with pytest.raises(CommandError, match="missing utility approval"):
            C.create(store, "field", {"pico": ("p.mfw", parse_image(pico))}, fleet.Selection(), C.Policy(), keys,
                     require_approval=False)

    approved = tmp_path / "approved.mfw"
    proc = subprocess.run([MFW, "image", "approve", str(image), "--keys", str(d / "utility"), "-o", str(approved),
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signatures"] == 2
    assert verify_image(Image.read(approved), keys.vendor_public_raw, keys.utility_public_raw,
                        require_approval=True) == []
    with Store(str(tmp_path / "office.db")) as store:
        C.create(store, "approved", {"sim": (str(approved), Image.read(approved))}, fleet.Selection(), C.Policy(), keys)


def test_the_vendor_cannot_approve_and_nobody_approves_a_forgery(orgs, tmp_path):
    d, image = orgs
    proc = subprocess.run([MFW, "image", "approve", str(image), "--keys", str(d / "vendor")], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "no utility private key" in proc.stderr
    forged = tmp_path / "forged.mfw"
    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    forged.write_bytes(bytes(data))
    proc = subprocess.run([MFW, "image", "approve", str(forged), "--keys", str(d / "utility")], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert forged.read_bytes() == bytes(data)  # nothing written


def test_the_field_boards_require_approval_on_the_meter_too():
    for board in ("pico", "pico2"):
        cfg = json.loads((FIRMWARE.parent / "boards" / board / "board.json").read_text())
        assert cfg["defaults"]["require_approval"] is True
