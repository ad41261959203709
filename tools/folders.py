"""The loop the per-folder tools share: score each folder of outputs, report its failures.

    results, failed = score_folders(dirs, score)   # score(dir) -> (result, error messages)

A folder's failed images are printed to stderr, one `error:` line each, and make `failed` true;
the folder's result is kept. A folder that cannot be read at all (missing, or an unreadable pairs
CSV) stops the loop: its reason is printed and `results` is None, so the tool exits 1 without a
partial table.
"""
import sys

from helpers.errors import InputError


def score_folders(dirs, score):
    """-> (results, failed): [score(d)[0] for d in dirs] and whether any image failed; (None,
    True) when a folder could not be read."""
    results, failed = [], False
    for d in dirs:
        try:
            result, messages = score(d)
        except (OSError, InputError) as e:  # a missing folder, an unreadable pairs CSV
            print(f"error: {e}", file=sys.stderr)
            return None, True
        for m in messages:
            print(f"error: {m}", file=sys.stderr)
        failed |= bool(messages)
        results.append(result)
    return results, failed
