"""The parts of preprocess.py, the data stage; the script keeps only its command line.

- ``sources``: folders (searched recursively) and zips (read in place), each opened into a ``Source`` record
- ``celeba``: everything CelebA: recognising it, its face box at every size, partitions, attribute files, the download
- ``decode``: decoding and cropping one image to every output size (runs in the worker processes)
- ``writer``: the worker pool streaming into ``.npy`` files, then labels, preview and ``.json``, each atomic
- ``synthetic``: the offline cartoon faces of ``--synthetic N``
- ``photo``: a person's uploaded photo read as hostile input (formats, byte and pixel limits, bombs, EXIF) in memory
- ``align``: a photo's face aligned as CelebA's (MTCNN landmarks, a similarity to CelebA's template), then the face box
"""
