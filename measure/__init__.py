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
from mini_ldm.lazy import exports

# imported on first use: evaluate.py checks its flags through measure's settings before torch is imported
__getattr__, __dir__ = exports(__name__, {
    "find_default_weights": ".inception", "load_inception": ".inception", "fid": ".metrics",
    "inception_score": ".metrics", "kid": ".metrics", "memorization_audit": ".metrics",
    "FolderFeatures": ".features", "folder_features": ".features", "image_features": ".features"})
