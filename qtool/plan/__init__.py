"""Where quantizers go: the AIMET runtime config (`config`), per-tensor overrides (`overrides`),
and the graph + config -> `QuantPlan` step (`build`)."""
