"""FFT statistics of a pairs CSV after the signed log sign(x) log1p(|x|): for training with
`--signed-log true` (the original system's setting; the default trains on linear values, whose
statistics get_fft_statistics.py computes). Same options and output:

    python get_fft_statistics_log.py --csv pairs.csv --out stats.json [--representation magphase]
                                     [--crop 64] [--workers 4]

The output holds the representation's own channel keys and, always, the original system's
magnitude/phase table (mag_R_max ... phase_B_std) under "original".
"""
import sys

from get_fft_statistics import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], log=True))
