"""FFT statistics after the signed log (what training normalises with).

    python get_fft_statistics_log.py --csv pairs.csv --out stats.json [--representation realimag]
                                     [--crop 64] [--workers 4]

Writes the per-channel keys of the original system (mag_R_max ... phase_B_std, number_of_images,
number_of_pixels) for the rain, diff and clean spectra, the settings they depend on, and
per-frequency statistics at the crop size in stats.npz. See helpers/statistics.py.
"""
import sys

from ddpm_conditional import launch
from helpers.statistics import statistics_main

if __name__ == "__main__":
    sys.exit(statistics_main(sys.argv[1:], log=True, defaults=launch()))
