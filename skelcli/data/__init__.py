"""Data: raw NTU RGB+D / PKU-MMD readers (ntu.py, pku.py), the HDF5 store (store.py) and `prepare`."""
