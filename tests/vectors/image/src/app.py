# Test vector app: the device test imports it from an ImageVfs and expects answer() == 42.
from pkg import calc


def answer():
    return calc.double(21)
