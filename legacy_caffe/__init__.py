"""Real Caffe 1.0 as the reference: a Debian 11 root with ATLAS and OpenBLAS, and golden dumps.

Host side (our Python): ``rootfs`` builds and runs the root, ``goldens`` makes and reads goldens,
``preprocess`` prepares the inputs. Inside the root (Debian's Python 3.9 + pycaffe) only the
standalone scripts in ``inside/`` run.
"""
