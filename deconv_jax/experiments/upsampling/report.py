"""``results.md``: the study's tables in markdown, from the ``results.json`` that `study.sweep` builds."""

from __future__ import annotations

from typing import Any

from deconv_jax.experiments.upsampling.stats import ALPHA, mean_std

# results key -> (name in the tables, decimals)
METRICS = {
  "fid": ("FID", 1),
  "classifier_score": ("classifier score", 2),
  "checkerboard_score": ("checkerboard score", 2),
}


def results_markdown(results: dict[str, Any]) -> str:
  """The tables of ``results`` (as `study.sweep` builds it): variants and reference rows, differences, the check."""
  seeds, k = results["seeds"], len(results["seeds"])
  cells = lambda found: " | ".join(mean_std(found[key], digits) for key, (_, digits) in METRICS.items())
  fixed = lambda found: " | ".join(f"{found[key]:.{digits}f}" for key, (_, digits) in METRICS.items())
  half = results["real_halves"]["num_images"]
  rows = [
    f"| untrained ({results['untrained']['variant']}, step 0) | {cells(results['untrained'])} |  |",
    *(f"| {name} | {cells(v)} | {mean_std(v['train_seconds'], 0)} |" for name, v in results["variants"].items()),
    f"| real: {results['real_train']['num_images']} training digits | {fixed(results['real_train'])} |  |",
    f"| real: two halves of the real set, {half} vs {half} | {cells(results['real_halves'])} |  |",
  ]
  seed_text = f"seed {seeds[0]}" if k == 1 else f"seeds {seeds[0]} to {seeds[-1]}"
  spread = "" if k == 1 else f" (mean ± sample standard deviation over the {k} seeds, ddof = 1)"
  lines = [
    f"{results['num_train_steps']} steps of {results['batch_size']} per run, {seed_text}{spread}. FID and classifier "
    f"score use the penultimate features / logits of the classifier in {results['classifier_workdir']}; "
    f"{results['num_generated']} generated images per run against all {results['num_real']} images of the real set "
    f"({results['real_set']}). Checkerboard score = share of power at the stride-2 alias frequencies, relative to "
    "the real set's. Training loop: seconds per run, from its metrics.jsonl.",
    "",
    "| variant | FID | classifier score | checkerboard score | training loop (s) |",
    "| --- | --- | --- | --- | --- |",
    *rows,
    "",
    f"Reference rows. Untrained: the {results['untrained']['variant']} generator at its initial parameters, per seed. "
    f"Training digits: all {results['real_train']['num_images']} of them measured as if generated (FID to the real "
    "set, their classifier score and checkerboard score). Two halves: the real set split at random into two "
    f"disjoint halves, once per seed, one half measured against the other; its counts ({half} vs {half}) differ "
    f"from the generated rows' ({results['num_generated']} vs {results['num_real']}), and FID's bias depends on them. "
    f"The classifier score of the whole real set is {results['real_classifier_score']:.2f}.",
    "",
    *_comparisons_markdown(results["comparisons"], k),
    "",
    *_check_markdown(results["checkerboard_check"]),
  ]
  return "\n".join(lines)


def _comparisons_markdown(found: list[dict[str, Any]], num_seeds: int) -> list[str]:
  if not found:
    return ["None of the pairs the study compares (`variants.comparisons`) has both its variants in this sweep."]
  chance = (
    f" Of {len(found)} tests, about {len(found) * ALPHA:.1f} would exceed by chance alone if no variant differed."
  )
  rows = []
  for c in found:
    digits = METRICS[c["metric"]][1]
    t = "n/a" if c["t"] is None else f"{c['t']:.2f} ({c['df']})"
    p = "n/a" if c["p"] is None else f"{c['p']:.3f}"
    name = METRICS[c["metric"]][0]
    rows.append(f"| {c['a']} vs {c['b']} | {name} | {c['difference']:+.{digits}f} | {t} | {p} | {c['verdict']} |")
  if num_seeds == 1:
    text = "Differences, from one seed: there is no seed-to-seed spread to test them against (--seeds=2 or more)."
  else:
    text = (
      f"Differences, paired by seed: a two-sided paired t-test over the {num_seeds} seeds (scipy.stats.ttest_rel on "
      "the per-seed values; seed s gives both variants the same data order, and the same latents are measured). "
      f'"exceeds spread" when p < {ALPHA}, else "within spread".{chance}'
    )
  return [
    text,
    "",
    "| a vs b | metric | mean of a − b | t (df) | p | verdict |",
    "| --- | --- | --- | --- | --- | --- |",
    *rows,
  ]


def _check_markdown(check: dict[str, Any]) -> list[str]:
  amplitudes = check["amplitudes"]
  init_rows = [f"| {v} | {mean_std(s['random'], 1)} | {mean_std(s['equal'], 2)} |" for v, s in check["init"].items()]
  pattern_rows = [f"| a · {p} | " + " | ".join(f"{x:.2f}" for x in xs) + " |" for p, xs in check["patterns"].items()]
  return [
    f"Checkerboard score check, where the artifacts are known ({check['num_images']} images per generator, against "
    "the real set). Generators at initialization, per seed: with their random initial weights, and with equal "
    "weights (every kernel of the up-sampling blocks and the output layer set to one value, the latent projection "
    "left random), so that only how a kernel overlaps itself shapes the image: with stride 2, kernels 3 and 5 "
    "overlap unevenly, kernel 4 evenly (Odena et al. 2016).",
    "",
    "| generator at initialization | random weights | equal weights |",
    "| --- | --- | --- |",
    *init_rows,
    "",
    "Real set plus a stride-2 pattern of amplitude a (not clipped), against the real set:",
    "",
    "| added | " + " | ".join(f"a = {a:g}" for a in amplitudes) + " |",
    "| --- |" + " --- |" * len(amplitudes),
    *pattern_rows,
  ]
