"""Leave-one-subject-out training, one question per module:

settings.py   TrainSettings, modes, validation; `resolve_train_settings` (options > models.NAME > train)
data.py       the DI cache as training arrays, fold keys, `check_fold_classes`
fold.py       one fold: epochs, batches, prediction
execution.py  `run_loso`: folds over joblib (loky) or a Dask cluster, torch threads per fold
run_files.py  a fold's folder and the run's files (run.json, predictions, curve, timings)
resume.py     work folder, lock and run key of a resumable run
run.py        `train_run` / `train_cache`: a whole resumable run into its folder
augment.py    batched spatial augmentation
models/       the model registry: LEARNet, timm models, pretrained weights
"""
