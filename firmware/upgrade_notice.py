# The last upgrade-available notice (FR33), a message of its own before any payload: stored by
# the update agent, read by status without loading the agent.
import json

PATH = "/data/notice.json"


def load():
    try:
        with open(PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def store(notice):
    with open(PATH, "w") as f:
        json.dump(notice, f)
