"""What preprocess.py reads besides photos: ``synthetic``, the offline cartoon faces."""
