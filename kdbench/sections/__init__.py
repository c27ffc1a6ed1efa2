"""The paper's sections, one module each: their systems' training configs, table cells, Markdown and `write`
(`mnist`: section 3 with `bias`; `ensembles`: sections 4 and 6; `specialists`: section 5; `variants`: every KD
variant in every distillation experiment)."""
