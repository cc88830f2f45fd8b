"""The statistics every experiment reports, in one home: AUC and DeLong's test, exact binomial tests and
Clopper-Pearson intervals, Fisher's exact test, agreement (kappa), Mann-Whitney Z, histograms on common bins.
Used by the classifier experiment, the reader study, the privacy audit and the image-set metrics; imports
nothing of ours."""
