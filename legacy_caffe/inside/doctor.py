"""Print the inside environment as JSON: Caffe version, BLAS in use, package versions."""

import json
import sys

sys.path.insert(0, sys.path[0])
import caffe_env  # noqa: E402

if __name__ == "__main__":
    try:
        info = caffe_env.environment()
    except ImportError as exc:
        print(json.dumps({"error": f"cannot import caffe: {exc}"}))
        sys.exit(1)
    print(json.dumps(info, indent=2, sort_keys=True))
