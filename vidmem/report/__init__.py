"""The HTML report of a pipeline run (`python -m stages.report` → reports/index.html) and the end-of-repro
headline table (`python -m vidmem.report.headline`).

- `families`: which metrics file(s) and rows make each family's table, its headline metric and baseline, and
  the papers' numbers for scale (one data table, each row with its source).
- `svg`: inline SVG drawings (line charts of DVCLive curves, event timelines) — no JavaScript library.
- `page`: the self-contained page (CSS and images inline; nothing is fetched from the network).
"""
