"""pixels: the same network in image space, the honest reference (`--representation pixels`).

    target "diff": clean - rain;  "clean": 2 clean - 1;  condition: 2 rain - 1; 3 channels each,
    no statistics, no extra inputs.
"""
from representations.base import Representation


class Pixels(Representation):
    name = "pixels"
    summary = "RGB pixels"
    domain = "pixel"
    channel_names = ("R", "G", "B")
    needs_statistics = False

    def parts(self, clean, rain):
        return {"rain": 2 * rain - 1, "diff": clean - rain, "clean": 2 * clean - 1}

    def encode(self, clean, rain):
        cond = 2 * rain - 1
        if clean is None:
            return None, cond
        return (clean - rain if self.target == "diff" else 2 * clean - 1), cond

    def decode(self, target_n, rain):
        return self.from_target(target_n, rain)

    def cond_to_image(self, cond, size=None):
        return (cond + 1) / 2

    def from_target(self, tgt, rain):
        return rain + tgt if self.target == "diff" else (tgt + 1) / 2
