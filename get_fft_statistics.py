"""FFT statistics before the signed log (raw orthonormal FFT values; for analysis, training uses
get_fft_statistics_log.py). Same options and output layout:

    python get_fft_statistics.py --csv pairs.csv --out stats_raw.json [--crop 64]
"""
import sys

from ddpm_conditional import launch
from helpers.statistics import statistics_main

if __name__ == "__main__":
    sys.exit(statistics_main(sys.argv[1:], log=False, defaults=launch()))
