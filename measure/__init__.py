"""Evaluating a synthetic image set against a real one: what evaluate.py does, usable from Python.

    from measure import load_inception, folder_features, fid, kid, inception_score, memorization_audit
    model = load_inception("weights/pt_inception-2015-12-05-6726825d.pth")
    real = folder_features("data/effusion", model, resize="tf1")
    synth = folder_features("outputs/effusion", model, resize="tf1")
    fid(real.features, synth.features); kid(real.features, synth.features)
    inception_score(synth.logits); memorization_audit(real.pool, synth.pool)

The downstream classifier experiment (classify.py) is the package classifier/; the AUC and DeLong statistics
are stats/auc.py.
"""
from .inception import find_default_weights, load_inception  # noqa: F401
from .metrics import fid, inception_score, kid, memorization_audit  # noqa: F401

from .features import FolderFeatures, folder_features, image_features  # noqa: F401
