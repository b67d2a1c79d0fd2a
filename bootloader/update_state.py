# The update's stored state (/data/update.json): its status in the DLMS class 18 states, the
# image it is about, and the activation's options. Apart from the transfer's code so the
# application can read and settle it (status, the boot after a switch, a revert) without loading
# the transfer, which it holds only while an update runs.
import json
from bootloader.protocol import NOT_INITIATED, ACTIVATING, ACTIVATED, ACTIVATION_FAILED

PATH = "/data/update.json"
# Why the bootloader or the image's health check reverted an image on trial (record_failure); a
# revert alarm's value is the index. An operator's revert has none: it was asked for.
CAUSES = ("crash", "hang", "health", "attempts", "verify")


def load():
    try:
        with open(PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"status": NOT_INITIATED}


def store(s):
    with open(PATH, "w") as f:
        json.dump(s, f)


def summary(s):
    """What the host sees of a stored state (the transfer adds its grant while one runs)."""
    out = {"status": s["status"], "kind": s.get("kind", "firmware"), "version": s.get("version"), "image_id": s.get("id"),
           "result": s.get("result"), "reason": s.get("reason")}
    out.update((k, s[k]) for k in ("registers", "ack", "activate_at_s", "base") if k in s)
    return out


def _open_activation(s):
    """An image's activation without its verdict yet (a bootloader's is copies.settle's)."""
    return s.get("status") in (ACTIVATING, ACTIVATED) and s.get("result") in (None, "trial") \
        and s.get("kind", "firmware") == "firmware"


def settle(running_image_id):
    """After a boot: an activation either started the new image (trial) or was reverted.
    True when that changed the stored state."""
    s = load()
    if not _open_activation(s):
        return False
    if running_image_id is not None and running_image_id.hex() == s["id"]:
        s["status"], s["result"] = ACTIVATED, "trial"
    else:
        s["status"], s["result"] = ACTIVATION_FAILED, "reverted"
        s["reason"] = s.get("reason") or "the meter went back to the previous image"
    store(s)
    return True


def confirmed():
    """The trial's image is confirmed; True when that changed the stored state."""
    s = load()
    if s.get("result") == "trial":
        s["result"] = "confirmed"
        store(s)
        return True
    return False


def record_failure(reason, cause=None, event_seq=None):
    """Mark an activation as reverted with its reason, from wherever the failure was seen
    (the bootloader before the image runs, or the image's own health check). An automatic
    revert also records its cause (CAUSES) and the seq of its record in the event log, which
    names this revert: the image the meter goes back to raises one alarm for it."""
    s = load()
    if _open_activation(s):
        s["status"], s["result"], s["reason"] = ACTIVATION_FAILED, "reverted", reason
        if cause:
            s["cause"], s["revert_event"] = cause, event_seq
        store(s)
