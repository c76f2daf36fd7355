"""Training: the loop and what it drives.

    training_loop.py  the loop, read top to bottom; its signature holds every option's default,
                      OPTION_KINDS which of them are per-run, the recipe's or fix the networks
    config.py         RECIPES and how defaults, a recipe, a checkpoint and typed options resolve
                      into the loop's arguments (resolve_config, validate): what train.py's flags go through
    trainer.py        G, D, their optimisers, EMA and the step
    loss.py           every loss term and the regularisers' state
    augment.py        DiffAugment / ADA and the augmentation pipe D's inputs go through
    device.py         device, precision and DDP helpers
    checkpoint.py     the resume checkpoint and RNG states
    distributed.py    process-group helpers
    stats.py          metrics, logs, sample grids, TensorBoard
"""
