"""The downstream classifier experiment: what classify.py does, usable from Python. Does the synthetic data
help? A ResNet-18 per arm (real, real + synthetic, synthetic) and repeat, tested on the same real cases.

    from classifier import ClassifySettings, run_experiment
    results = run_experiment(ClassifySettings(train="real/train", val="real/val", test="real/test",
                                              synthetic="synthetic", repeats=5))   # = results.json

settings.py (the flags), data.py (class folders -> images in memory), resnet.py, augment.py, experiment.py
(arms x repeats, training, resume), report.py (results.json, predictions.csv, roc.png); the statistics
(AUC, DeLong, mean/std) are stats/auc.py's.
"""
from mini_ldm.lazy import exports

# imported on first use: classify.py checks its flags through classifier's settings before torch is imported
__getattr__, __dir__ = exports(__name__, {"run_experiment": ".experiment", "ClassifySettings": ".settings"})
