"""Meter.upload, the one host-side image upload loop, against the simulated meter."""
import pytest

from meterfw import protocol as P


class _Stop(Exception):
    """The host tool goes away part-way (raised from the progress callback, between windows)."""


def test_upload_right_after_boot_sends_every_block_once_and_the_image_verifies(board, meter, images):
    # Started while the meter's heap is at its busiest (the post-boot health check): frames
    # cost it no allocation of block size, so it neither runs out of memory nor restarts.
    data = images["v2"].read_bytes()
    seen = []
    up = meter.upload(data, lambda done, total: seen.append((done, total)))
    assert up["resumed_from_block"] == 0 and up["bytes_sent"] == len(data)
    t = up["transfer"]
    assert set(t) == {"block_frames", "bad_frames", "windows", "no_reply", "resyncs", "blocks_resent",
                      "blocks_seconds"}
    assert t["block_frames"] == up["blocks"] and t["blocks_resent"] == 0 and t["bad_frames"] == 0, up
    assert 1 <= t["windows"] <= up["blocks"]
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert meter.verify()["status"] == P.VERIFIED
    assert board.sim.state()["boots"] == 1


def test_upload_resumes_from_the_first_block_the_meter_lacks(board, meter, images):
    data = images["v2"].read_bytes()

    def stop_half_way(done, total):
        if done >= total // 2:
            raise _Stop

    with pytest.raises(_Stop):
        meter.upload(data, stop_half_way)
    held = meter.update_state()["first_not_transferred_block"]
    assert held > 0
    up = meter.upload(data)  # no initiate: that would start the slot again from block 0
    assert up["resumed_from_block"] == held < up["blocks"]
    assert up["transfer"]["block_frames"] == up["blocks"] - held, up
    assert up["bytes_sent"] == len(data) - held * meter.update_state()["block_size"]
    assert meter.verify()["status"] == P.VERIFIED
