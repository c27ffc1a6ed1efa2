# A section without a rule file of its own (a user's section from a file under `extensions`, or a built-in that
# needs no rule but its tables): its `aggregate_<name>` rule, made from the section alone (kdbench.sections). It
# waits for the run records of every seed of the section's jobs (and its `aggregate_inputs`), and writes the
# section's OUTPUTS and, when it has SUMMARY, its parts of summary.csv, through `kdbench aggregate <name>`.

for _name in [n for n in sections.names() if n not in RULE_FILE_SECTIONS]:
    _section, _files = sections.get(_name), user_file(sections.source(_name))

    rule:
        name:
            f"aggregate_{_name}"
        input:
            runs=sections.aggregate_inputs(_name, config, RUNS),
            paper=PAPER,
            extensions=_files,
        output:
            [RESULTS / f"{_name}_{part}.csv" for part in ("summary", "provenance") if _section.SUMMARY],
            [report(RESULTS / f, caption="../report/section.rst", category=_name) for f in _section.OUTPUTS],
        params:
            runs=RUNS,
            out=RESULTS,
            name=_name,
            cfg=quoted_json(config_for("profile", "seeds", _name)),
            extensions=extensions_arg(_files),
            caption=getattr(_section, "CAPTION", f"The {_name} section's tables and figures."),
        localrule: True
        conda:
            SOFTWARE
        log:
            layout.log(RESULTS, f"aggregate_{_name}", _name),
        shell:
            "exec python3 -m kdbench aggregate {params.name} {params.extensions} --config-json {params.cfg} --runs {params.runs} "
            "--paper {input.paper} --out-dir {params.out} > {log} 2>&1"
