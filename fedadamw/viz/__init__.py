"""The views of a results store: dashboard, HTML report and paper figures (no torch, no Flower).

From the bottom up: `style` (colours, fonts, axis labels), `figures` (pure DataFrame → Figure
builders), `labels` (clients' label counts, rebuilt from a run's config), `views` (what each view
reads from a `Store`, and the standard figure set), then the outputs `html_report`, `export`
(PNG/PDF) and `dashboard_app` with its server in `serve`; `commands` is what the CLI calls.
"""
