#!/bin/sh
# Runs inside the Debian 11 root (chroot or docker): with_blas.sh atlas|openblas CMD [ARG...]
# libcaffe1 links the generic libblas.so.3 / liblapack.so.3; Debian's alternatives decide which
# implementation that is, and the choice holds for every process started afterwards.
set -e
if [ $# -lt 2 ]; then
    echo "usage: with_blas.sh atlas|openblas CMD [ARG...]" >&2
    exit 2
fi
blas=$1
shift
case "$blas" in
    atlas) dir=atlas ;;
    openblas) dir=openblas-pthread ;;
    *) echo "with_blas.sh: unknown BLAS '$blas' (atlas or openblas)" >&2; exit 2 ;;
esac
libdir=/usr/lib/x86_64-linux-gnu
for lib in blas lapack; do
    target="$libdir/$dir/lib$lib.so.3"
    if [ ! -e "$target" ]; then
        echo "with_blas.sh: $target is missing; is the $blas package installed?" >&2
        exit 3
    fi
    update-alternatives --quiet --set "lib$lib.so.3-x86_64-linux-gnu" "$target"
done
export GLOG_minloglevel="${GLOG_minloglevel:-2}"
export LEGACY_CAFFE_BLAS="$blas"
exec "$@"
