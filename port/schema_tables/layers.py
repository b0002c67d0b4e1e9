"""Caffe 1.0's per-layer ``*_param`` messages (see port.schema_tables)."""

from __future__ import annotations

from .net import FILLER

LAYERS: dict[str, dict] = {
    "LossParameter": {
        "enums": {"NormalizationMode": {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}},
        "fields": [
            ("ignore_label", 1, "int32", "o", None, False),
            ("normalization", 3, "LossParameter.NormalizationMode", "o", "VALID", False),
            ("normalize", 2, "bool", "o", None, False),
        ],
    },
    "AccuracyParameter": {
        "fields": [
            ("top_k", 1, "uint32", "o", 1, False),
            ("axis", 2, "int32", "o", 1, False),
            ("ignore_label", 3, "int32", "o", None, False),
        ]
    },
    "ArgMaxParameter": {
        "fields": [
            ("out_max_val", 1, "bool", "o", False, False),
            ("top_k", 2, "uint32", "o", 1, False),
            ("axis", 3, "int32", "o", None, False),
        ]
    },
    "ConcatParameter": {
        "fields": [("axis", 2, "int32", "o", 1, False), ("concat_dim", 1, "uint32", "o", 1, False)]
    },
    "BatchNormParameter": {
        "fields": [
            ("use_global_stats", 1, "bool", "o", None, False),
            ("moving_average_fraction", 2, "float", "o", 0.999, False),
            ("eps", 3, "float", "o", 1e-5, False),
        ]
    },
    "BiasParameter": {
        "fields": [
            ("axis", 1, "int32", "o", 1, False),
            ("num_axes", 2, "int32", "o", 1, False),
            ("filler", 3, FILLER, "o", None, False),
        ]
    },
    "ContrastiveLossParameter": {
        "fields": [
            ("margin", 1, "float", "o", 1.0, False),
            ("legacy_version", 2, "bool", "o", False, False),
        ]
    },
    "ConvolutionParameter": {
        "enums": {"Engine": ["DEFAULT", "CAFFE", "CUDNN"]},
        "fields": [
            ("num_output", 1, "uint32", "o", None, False),
            ("bias_term", 2, "bool", "o", True, False),
            ("pad", 3, "uint32", "r", None, False),
            ("kernel_size", 4, "uint32", "r", None, False),
            ("stride", 6, "uint32", "r", None, False),
            ("dilation", 18, "uint32", "r", None, False),
            ("pad_h", 9, "uint32", "o", 0, False),
            ("pad_w", 10, "uint32", "o", 0, False),
            ("kernel_h", 11, "uint32", "o", None, False),
            ("kernel_w", 12, "uint32", "o", None, False),
            ("stride_h", 13, "uint32", "o", None, False),
            ("stride_w", 14, "uint32", "o", None, False),
            ("group", 5, "uint32", "o", 1, False),
            ("weight_filler", 7, FILLER, "o", None, False),
            ("bias_filler", 8, FILLER, "o", None, False),
            ("engine", 15, "ConvolutionParameter.Engine", "o", "DEFAULT", False),
            ("axis", 16, "int32", "o", 1, False),
            ("force_nd_im2col", 17, "bool", "o", False, False),
        ],
    },
    "CropParameter": {
        "fields": [("axis", 1, "int32", "o", 2, False), ("offset", 2, "uint32", "r", None, False)]
    },
    "DataParameter": {
        "enums": {"DB": ["LEVELDB", "LMDB"]},
        "fields": [
            ("source", 1, "string", "o", None, False),
            ("batch_size", 4, "uint32", "o", None, False),
            ("rand_skip", 7, "uint32", "o", 0, False),
            ("backend", 8, "DataParameter.DB", "o", "LEVELDB", False),
            ("scale", 2, "float", "o", 1.0, False),
            ("mean_file", 3, "string", "o", None, False),
            ("crop_size", 5, "uint32", "o", 0, False),
            ("mirror", 6, "bool", "o", False, False),
            ("force_encoded_color", 9, "bool", "o", False, False),
            ("prefetch", 10, "uint32", "o", 4, False),
        ],
    },
    "DropoutParameter": {
        "fields": [
            ("dropout_ratio", 1, "float", "o", 0.5, False),
            ("scale_train", 2, "bool", "o", True, False),
        ]
    },
    "DummyDataParameter": {
        "fields": [
            ("data_filler", 1, FILLER, "r", None, False),
            ("shape", 6, "BlobShape", "r", None, False),
            ("num", 2, "uint32", "r", None, False),
            ("channels", 3, "uint32", "r", None, False),
            ("height", 4, "uint32", "r", None, False),
            ("width", 5, "uint32", "r", None, False),
        ]
    },
    "EltwiseParameter": {
        "enums": {"EltwiseOp": ["PROD", "SUM", "MAX"]},
        "fields": [
            ("operation", 1, "EltwiseParameter.EltwiseOp", "o", "SUM", False),
            ("coeff", 2, "float", "r", None, False),
            ("stable_prod_grad", 3, "bool", "o", True, False),
        ],
    },
    "ELUParameter": {"fields": [("alpha", 1, "float", "o", 1.0, False)]},
    # Clip and Swish joined BVLC master in 2018; Debian's Caffe 1.0 (git 2018-08-21) has both.
    "ClipParameter": {
        "fields": [("min", 1, "float", "o", None, False), ("max", 2, "float", "o", None, False)]
    },
    "SwishParameter": {"fields": [("beta", 1, "float", "o", 1.0, False)]},
    "EmbedParameter": {
        "fields": [
            ("num_output", 1, "uint32", "o", None, False),
            ("input_dim", 2, "uint32", "o", None, False),
            ("bias_term", 3, "bool", "o", True, False),
            ("weight_filler", 4, FILLER, "o", None, False),
            ("bias_filler", 5, FILLER, "o", None, False),
        ]
    },
    "ExpParameter": {
        "fields": [
            ("base", 1, "float", "o", -1.0, False),
            ("scale", 2, "float", "o", 1.0, False),
            ("shift", 3, "float", "o", 0.0, False),
        ]
    },
    "FlattenParameter": {
        "fields": [("axis", 1, "int32", "o", 1, False), ("end_axis", 2, "int32", "o", -1, False)]
    },
    "HDF5DataParameter": {
        "fields": [
            ("source", 1, "string", "o", None, False),
            ("batch_size", 2, "uint32", "o", None, False),
            ("shuffle", 3, "bool", "o", False, False),
        ]
    },
    "HDF5OutputParameter": {"fields": [("file_name", 1, "string", "o", None, False)]},
    "HingeLossParameter": {
        "enums": {"Norm": {"L1": 1, "L2": 2}},
        "fields": [("norm", 1, "HingeLossParameter.Norm", "o", "L1", False)],
    },
    "ImageDataParameter": {
        "fields": [
            ("source", 1, "string", "o", None, False),
            ("batch_size", 4, "uint32", "o", 1, False),
            ("rand_skip", 7, "uint32", "o", 0, False),
            ("shuffle", 8, "bool", "o", False, False),
            ("new_height", 9, "uint32", "o", 0, False),
            ("new_width", 10, "uint32", "o", 0, False),
            ("is_color", 11, "bool", "o", True, False),
            ("scale", 2, "float", "o", 1.0, False),
            ("mean_file", 3, "string", "o", None, False),
            ("crop_size", 5, "uint32", "o", 0, False),
            ("mirror", 6, "bool", "o", False, False),
            ("root_folder", 12, "string", "o", "", False),
        ]
    },
    "InfogainLossParameter": {"fields": [("source", 1, "string", "o", None, False)]},
    "InnerProductParameter": {
        "fields": [
            ("num_output", 1, "uint32", "o", None, False),
            ("bias_term", 2, "bool", "o", True, False),
            ("weight_filler", 3, FILLER, "o", None, False),
            ("bias_filler", 4, FILLER, "o", None, False),
            ("axis", 5, "int32", "o", 1, False),
            ("transpose", 6, "bool", "o", False, False),
        ]
    },
    "InputParameter": {"fields": [("shape", 1, "BlobShape", "r", None, False)]},
    "LogParameter": {
        "fields": [
            ("base", 1, "float", "o", -1.0, False),
            ("scale", 2, "float", "o", 1.0, False),
            ("shift", 3, "float", "o", 0.0, False),
        ]
    },
    "LRNParameter": {
        "enums": {
            "NormRegion": ["ACROSS_CHANNELS", "WITHIN_CHANNEL"],
            "Engine": ["DEFAULT", "CAFFE", "CUDNN"],
        },
        "fields": [
            ("local_size", 1, "uint32", "o", 5, False),
            ("alpha", 2, "float", "o", 1.0, False),
            ("beta", 3, "float", "o", 0.75, False),
            ("norm_region", 4, "LRNParameter.NormRegion", "o", "ACROSS_CHANNELS", False),
            ("k", 5, "float", "o", 1.0, False),
            ("engine", 6, "LRNParameter.Engine", "o", "DEFAULT", False),
        ],
    },
    "MemoryDataParameter": {
        "fields": [
            ("batch_size", 1, "uint32", "o", None, False),
            ("channels", 2, "uint32", "o", None, False),
            ("height", 3, "uint32", "o", None, False),
            ("width", 4, "uint32", "o", None, False),
        ]
    },
    "MVNParameter": {
        "fields": [
            ("normalize_variance", 1, "bool", "o", True, False),
            ("across_channels", 2, "bool", "o", False, False),
            ("eps", 3, "float", "o", 1e-9, False),
        ]
    },
    "ParameterParameter": {"fields": [("shape", 1, "BlobShape", "o", None, False)]},
    "PoolingParameter": {
        "enums": {
            "PoolMethod": ["MAX", "AVE", "STOCHASTIC"],
            "Engine": ["DEFAULT", "CAFFE", "CUDNN"],
        },
        "fields": [
            ("pool", 1, "PoolingParameter.PoolMethod", "o", "MAX", False),
            ("pad", 4, "uint32", "o", 0, False),
            ("pad_h", 9, "uint32", "o", 0, False),
            ("pad_w", 10, "uint32", "o", 0, False),
            ("kernel_size", 2, "uint32", "o", None, False),
            ("kernel_h", 5, "uint32", "o", None, False),
            ("kernel_w", 6, "uint32", "o", None, False),
            ("stride", 3, "uint32", "o", 1, False),
            ("stride_h", 7, "uint32", "o", None, False),
            ("stride_w", 8, "uint32", "o", None, False),
            ("engine", 11, "PoolingParameter.Engine", "o", "DEFAULT", False),
            ("global_pooling", 12, "bool", "o", False, False),
        ],
    },
    "PowerParameter": {
        "fields": [
            ("power", 1, "float", "o", 1.0, False),
            ("scale", 2, "float", "o", 1.0, False),
            ("shift", 3, "float", "o", 0.0, False),
        ]
    },
    "PReLUParameter": {
        "fields": [
            ("filler", 1, FILLER, "o", None, False),
            ("channel_shared", 2, "bool", "o", False, False),
        ]
    },
    "PythonParameter": {
        "fields": [
            ("module", 1, "string", "o", None, False),
            ("layer", 2, "string", "o", None, False),
            ("param_str", 3, "string", "o", "", False),
            ("share_in_parallel", 4, "bool", "o", False, False),
        ]
    },
    "RecurrentParameter": {
        "fields": [
            ("num_output", 1, "uint32", "o", 0, False),
            ("weight_filler", 2, FILLER, "o", None, False),
            ("bias_filler", 3, FILLER, "o", None, False),
            ("debug_info", 4, "bool", "o", False, False),
            ("expose_hidden", 5, "bool", "o", False, False),
        ]
    },
    "ReductionParameter": {
        "enums": {"ReductionOp": {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4}},
        "fields": [
            ("operation", 1, "ReductionParameter.ReductionOp", "o", "SUM", False),
            ("axis", 2, "int32", "o", 0, False),
            ("coeff", 3, "float", "o", 1.0, False),
        ],
    },
    "ReLUParameter": {
        "enums": {"Engine": ["DEFAULT", "CAFFE", "CUDNN"]},
        "fields": [
            ("negative_slope", 1, "float", "o", 0.0, False),
            ("engine", 2, "ReLUParameter.Engine", "o", "DEFAULT", False),
        ],
    },
    "ReshapeParameter": {
        "fields": [
            ("shape", 1, "BlobShape", "o", None, False),
            ("axis", 2, "int32", "o", 0, False),
            ("num_axes", 3, "int32", "o", -1, False),
        ]
    },
    "ScaleParameter": {
        "fields": [
            ("axis", 1, "int32", "o", 1, False),
            ("num_axes", 2, "int32", "o", 1, False),
            ("filler", 3, FILLER, "o", None, False),
            ("bias_term", 4, "bool", "o", False, False),
            ("bias_filler", 5, FILLER, "o", None, False),
        ]
    },
    "SigmoidParameter": {
        "enums": {"Engine": ["DEFAULT", "CAFFE", "CUDNN"]},
        "fields": [("engine", 1, "SigmoidParameter.Engine", "o", "DEFAULT", False)],
    },
    "SliceParameter": {
        "fields": [
            ("axis", 3, "int32", "o", 1, False),
            ("slice_point", 2, "uint32", "r", None, False),
            ("slice_dim", 1, "uint32", "o", 1, False),
        ]
    },
    "SoftmaxParameter": {
        "enums": {"Engine": ["DEFAULT", "CAFFE", "CUDNN"]},
        "fields": [
            ("engine", 1, "SoftmaxParameter.Engine", "o", "DEFAULT", False),
            ("axis", 2, "int32", "o", 1, False),
        ],
    },
    "TanHParameter": {
        "enums": {"Engine": ["DEFAULT", "CAFFE", "CUDNN"]},
        "fields": [("engine", 1, "TanHParameter.Engine", "o", "DEFAULT", False)],
    },
    "TileParameter": {
        "fields": [("axis", 1, "int32", "o", 1, False), ("tiles", 2, "int32", "o", None, False)]
    },
    "ThresholdParameter": {"fields": [("threshold", 1, "float", "o", 0.0, False)]},
    "WindowDataParameter": {
        "fields": [
            ("source", 1, "string", "o", None, False),
            ("scale", 2, "float", "o", 1.0, False),
            ("mean_file", 3, "string", "o", None, False),
            ("batch_size", 4, "uint32", "o", None, False),
            ("crop_size", 5, "uint32", "o", 0, False),
            ("mirror", 6, "bool", "o", False, False),
            ("fg_threshold", 7, "float", "o", 0.5, False),
            ("bg_threshold", 8, "float", "o", 0.5, False),
            ("fg_fraction", 9, "float", "o", 0.25, False),
            ("context_pad", 10, "uint32", "o", 0, False),
            ("crop_mode", 11, "string", "o", "warp", False),
            ("cache_images", 12, "bool", "o", False, False),
            ("root_folder", 13, "string", "o", "", False),
        ]
    },
    "SPPParameter": {
        "enums": {
            "PoolMethod": ["MAX", "AVE", "STOCHASTIC"],
            "Engine": ["DEFAULT", "CAFFE", "CUDNN"],
        },
        "fields": [
            ("pyramid_height", 1, "uint32", "o", None, False),
            ("pool", 2, "SPPParameter.PoolMethod", "o", "MAX", False),
            ("engine", 6, "SPPParameter.Engine", "o", "DEFAULT", False),
        ],
    },
}
