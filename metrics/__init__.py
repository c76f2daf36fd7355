"""FID, KID, precision/recall and the features they are computed on; evaluate.py
is the command line over them, and the training loop's FID uses them directly.

    inception         the FID Inception-v3 network: its weights file, download or offline conversion, loading
    fid               the maths: activations -> statistics, the Frechet distance, KID
    features          images -> features -> statistics; the real set's caches; a generator's FID
    precision_recall  precision, recall, density, coverage and the copy share on features
"""
