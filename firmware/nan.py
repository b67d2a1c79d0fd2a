# The meter's network link (NAN/WAN): the driver this image runs, named once, in the import below.
# A technology change is an image whose nan.py imports another driver; a driver whose link does not
# come up fails the post-boot health check (critical) and is reverted like any bad image. Every
# driver gives open(board), the link the link server serves (link_in: readinto and ioctl; link_out:
# write), and check(m), the health check's nan item. Loaded for those calls and dropped after.
import nan_serial as driver


def open(board):
    return driver.open(board)


async def check(m):
    return await driver.check(m)
