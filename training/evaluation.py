"""Validation during training and the final evaluation: the held-out pairs derained at full size
through the one sampling path (sampling.py) and scored as the literature does
(helpers/metrics.py)."""
import json
import sys
from pathlib import Path

from helpers.figures import comparison_figure
from helpers.metrics import write_scores_csv
from sampling import Derainer, derain_items, pairs_items, sample_settings, sampler_text
from training.runlog import RunLog, say_above_bar


def derainer_for(cfg, parts, model, env):
    return Derainer(model, parts.rep, parts.diffusion, sample_settings(cfg), env.device,
                    name=Path(cfg["run_dir"]).name)


def make_validator(cfg, parts, env, run_dir):
    """validate(model, step) -> log record: the first eval_images held-out pairs."""
    if not cfg["val_csv"]:
        return None
    items = pairs_items(cfg["val_csv"], limit=cfg["eval_images"])

    def validate(model, step):
        report = derain_items(derainer_for(cfg, parts, model, env), items, score=True,
                              progress=False, keep=4)
        if report.shown:
            comparison_figure(report.shown, Path(run_dir) / f"val_{step:08d}.png", spectra=True)
        s = report.summary
        return {"val_psnr_y": s["psnr_y"], "val_ssim_y": s["ssim_y"],
                "val_input_psnr_y": s["baseline"]["psnr_y"], "val_pairs": s["n"]}
    return validate


def final_evaluation(cfg, parts, env, model, step):
    """Derain every held-out pair at full size with the EMA model, print PSNR-Y/SSIM-Y of the
    rainy input and of the result, and write the comparison figure and the derained images."""
    run_dir = Path(cfg["run_dir"])
    derainer = derainer_for(cfg, parts, model, env)
    report = derain_items(derainer, pairs_items(cfg["val_csv"]), out_dir=run_dir / "derained",
                          score=True, progress=True, keep=4, say=say_above_bar)
    if not report.rows:
        print(f"error: none of the pairs of {cfg['val_csv']} could be derained", file=sys.stderr)
        return None
    if report.shown:
        comparison_figure(report.shown, run_dir / "final_comparison.png", spectra=True)
    write_scores_csv(report.rows, run_dir / "derained" / "scores.csv")
    s = report.summary
    summary = {"step": step, "pairs": s["n"], "input_psnr_y": s["baseline"]["psnr_y"],
               "input_ssim_y": s["baseline"]["ssim_y"], "psnr_y": s["psnr_y"],
               "ssim_y": s["ssim_y"], "sampler": cfg["sampler"],
               "sample_steps": cfg["sample_steps"],
               "seconds_per_image": report.seconds_per_image}
    (run_dir / "final_eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    log = RunLog(run_dir, True, print)  # the final numbers beside the training curves too
    log.write({"step": step, "final_psnr_y": s["psnr_y"], "final_ssim_y": s["ssim_y"],
               "final_input_psnr_y": summary["input_psnr_y"],
               "final_input_ssim_y": summary["input_ssim_y"], "final_pairs": s["n"]})
    log.close()
    print(f"\nheld-out pairs ({s['n']}, {cfg['val_csv']}), "
          f"{sampler_text(cfg['process'], cfg)}:")
    print(f"  rainy input : PSNR-Y {summary['input_psnr_y']:6.2f} dB   "
          f"SSIM-Y {summary['input_ssim_y']:.4f}")
    print(f"  derained    : PSNR-Y {s['psnr_y']:6.2f} dB   SSIM-Y {s['ssim_y']:.4f}   "
          f"({s['psnr_y'] - summary['input_psnr_y']:+.2f} dB)")
    print(f"  figure {run_dir / 'final_comparison.png'}, images {run_dir / 'derained'}")
    return summary
