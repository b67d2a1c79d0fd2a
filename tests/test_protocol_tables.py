"""The host and the meter speak from the same tables: the command codes, the error codes and the
event codes the host knows are the ones the device defines (the platform's in bootloader/, the
application's in firmware/), and every event code the device logs has a name."""
import ast
import re
from pathlib import Path

from meterfw import auth, protocol, session

ROOT = Path(__file__).resolve().parents[1]
_CONST = re.compile(r"^([A-Z][A-Z0-9_]*) = const\((0x[0-9A-Fa-f]+|\d+)\)", re.M)


def _consts(*paths):
    out = {}
    for path in paths:
        for name, value in _CONST.findall((ROOT / path).read_text()):
            assert name not in out, f"{name} defined twice"
            out[name] = int(value, 0)
    return out


def _names(path):
    tree = ast.parse((ROOT / path).read_text())
    node = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "NAMES")
    return ast.literal_eval(node)


def _device_sources():
    return [p for d in ("bootloader", "firmware") for p in sorted((ROOT / d).glob("*.py"))]


def test_command_codes_agree():
    device = _consts("bootloader/protocol.py", "firmware/commands.py")
    device = {k: v for k, v in device.items() if v < 0x80 and k not in _STATES}
    host = {k: v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, int) and k not in _STATES}
    assert host == device


_STATES = {"NOT_INITIATED", "INITIATED", "VERIFYING", "VERIFIED", "VERIFY_FAILED", "ACTIVATING", "ACTIVATED",
           "ACTIVATION_FAILED"}


def test_update_states_agree():
    device = {k: v for k, v in _consts("bootloader/protocol.py").items() if k in _STATES}
    assert len(protocol.TRANSFER_STATUS) == len(device)
    assert protocol.INITIATED == device["INITIATED"] and protocol.VERIFIED == device["VERIFIED"]


def test_platform_and_application_commands_do_not_overlap():
    platform = {v for k, v in _consts("bootloader/protocol.py").items() if k not in _STATES}
    application = set(_consts("firmware/commands.py").values())
    assert not platform & application


def test_error_codes_agree():
    said = set()
    for path in _device_sources():
        said |= set(re.findall(r"(?:CommandError|_error)\([^\"\n]*\"([a-z_]+)\"", path.read_text()))
    assert said == set(protocol.ERRORS), "the host's ERRORS differ from the codes the device raises"
    for named in (session._REAUTH, session._BUSY, auth.SESSION_ERRORS):
        assert set(named) <= protocol.ERRORS


def test_event_codes_are_defined_once_and_named():
    platform = _consts("bootloader/eventlog.py")
    application = _consts("firmware/event_codes.py")
    platform = {k: v for k, v in platform.items() if not k.startswith("_")}
    assert not set(platform.values()) & set(application.values()), "a code is both the platform's and the application's"
    assert set(platform.values()) == set(_names("bootloader/event_names.py"))
    assert set(application.values()) == set(_names("firmware/event_names.py"))


def test_the_alarm_codes_the_host_reads_are_the_meters():
    application = _consts("firmware/event_codes.py")
    assert protocol.ALARM_CODES == {k: application[k] for k in protocol.ALARM_CODES}


def test_the_application_reaches_the_platform_through_its_api_alone():
    for path in sorted((ROOT / "firmware").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bootloader"):
                assert node.module == "bootloader.api" or node.names[0].name == "api", f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("bootloader") for a in node.names), path.name
