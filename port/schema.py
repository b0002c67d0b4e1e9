"""Caffe 1.0's protobuf schema, built at import time from the tables below.

No pycaffe and no protoc: the descriptors are assembled with the protobuf runtime that pip installs,
so the module works with whatever protobuf release is current. Field numbers, types and defaults are
those of Caffe 1.0 (BVLC ``caffe.proto``), including the deprecated V1 and V0 layer messages, so that
every deploy prototxt and caffemodel that Caffe 1.0 reads parses here too. Training-only messages are
kept (``data_param``, ``loss_param``...) because deploy files written by hand often carry them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "caffe"

# A field: (name, number, type, label, default, packed). label: "o" optional, "r" repeated.
# Types are protobuf scalar names, or the name of a message / enum of this schema ("Parent.Enum" for
# nested enums). Enum tables: {enum name: [value names in order of their numbers]} or explicit numbers.

_FILLER = "FillerParameter"

SCHEMA: dict[str, dict] = {
    "BlobShape": {"fields": [("dim", 1, "int64", "r", None, True)]},
    "BlobProto": {
        "fields": [
            ("shape", 7, "BlobShape", "o", None, False),
            ("data", 5, "float", "r", None, True),
            ("diff", 6, "float", "r", None, True),
            ("double_data", 8, "double", "r", None, True),
            ("double_diff", 9, "double", "r", None, True),
            ("num", 1, "int32", "o", 0, False),
            ("channels", 2, "int32", "o", 0, False),
            ("height", 3, "int32", "o", 0, False),
            ("width", 4, "int32", "o", 0, False),
        ]
    },
    "BlobProtoVector": {"fields": [("blobs", 1, "BlobProto", "r", None, False)]},
    "FillerParameter": {
        "enums": {"VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}},
        "fields": [
            ("type", 1, "string", "o", "constant", False),
            ("value", 2, "float", "o", 0.0, False),
            ("min", 3, "float", "o", 0.0, False),
            ("max", 4, "float", "o", 1.0, False),
            ("mean", 5, "float", "o", 0.0, False),
            ("std", 6, "float", "o", 1.0, False),
            ("sparse", 7, "int32", "o", -1, False),
            ("variance_norm", 8, "FillerParameter.VarianceNorm", "o", "FAN_IN", False),
        ],
    },
    "NetParameter": {
        "fields": [
            ("name", 1, "string", "o", None, False),
            ("input", 3, "string", "r", None, False),
            ("input_shape", 8, "BlobShape", "r", None, False),
            ("input_dim", 4, "int32", "r", None, False),
            ("force_backward", 5, "bool", "o", False, False),
            ("state", 6, "NetState", "o", None, False),
            ("debug_info", 7, "bool", "o", False, False),
            ("layer", 100, "LayerParameter", "r", None, False),
            ("layers", 2, "V1LayerParameter", "r", None, False),
        ]
    },
    "NetState": {
        "fields": [
            ("phase", 1, "Phase", "o", "TEST", False),
            ("level", 2, "int32", "o", 0, False),
            ("stage", 3, "string", "r", None, False),
        ]
    },
    "NetStateRule": {
        "fields": [
            ("phase", 1, "Phase", "o", None, False),
            ("min_level", 2, "int32", "o", None, False),
            ("max_level", 3, "int32", "o", None, False),
            ("stage", 4, "string", "r", None, False),
            ("not_stage", 5, "string", "r", None, False),
        ]
    },
    "ParamSpec": {
        "enums": {"DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1}},
        "fields": [
            ("name", 1, "string", "o", None, False),
            ("share_mode", 2, "ParamSpec.DimCheckMode", "o", None, False),
            ("lr_mult", 3, "float", "o", 1.0, False),
            ("decay_mult", 4, "float", "o", 1.0, False),
        ],
    },
    "LayerParameter": {
        "fields": [
            ("name", 1, "string", "o", None, False),
            ("type", 2, "string", "o", None, False),
            ("bottom", 3, "string", "r", None, False),
            ("top", 4, "string", "r", None, False),
            ("phase", 10, "Phase", "o", None, False),
            ("loss_weight", 5, "float", "r", None, False),
            ("param", 6, "ParamSpec", "r", None, False),
            ("blobs", 7, "BlobProto", "r", None, False),
            ("propagate_down", 11, "bool", "r", None, False),
            ("include", 8, "NetStateRule", "r", None, False),
            ("exclude", 9, "NetStateRule", "r", None, False),
            ("transform_param", 100, "TransformationParameter", "o", None, False),
            ("loss_param", 101, "LossParameter", "o", None, False),
            ("accuracy_param", 102, "AccuracyParameter", "o", None, False),
            ("argmax_param", 103, "ArgMaxParameter", "o", None, False),
            ("batch_norm_param", 139, "BatchNormParameter", "o", None, False),
            ("bias_param", 141, "BiasParameter", "o", None, False),
            ("clip_param", 148, "ClipParameter", "o", None, False),
            ("concat_param", 104, "ConcatParameter", "o", None, False),
            ("contrastive_loss_param", 105, "ContrastiveLossParameter", "o", None, False),
            ("convolution_param", 106, "ConvolutionParameter", "o", None, False),
            ("crop_param", 144, "CropParameter", "o", None, False),
            ("data_param", 107, "DataParameter", "o", None, False),
            ("dropout_param", 108, "DropoutParameter", "o", None, False),
            ("dummy_data_param", 109, "DummyDataParameter", "o", None, False),
            ("eltwise_param", 110, "EltwiseParameter", "o", None, False),
            ("elu_param", 140, "ELUParameter", "o", None, False),
            ("embed_param", 137, "EmbedParameter", "o", None, False),
            ("exp_param", 111, "ExpParameter", "o", None, False),
            ("flatten_param", 135, "FlattenParameter", "o", None, False),
            ("hdf5_data_param", 112, "HDF5DataParameter", "o", None, False),
            ("hdf5_output_param", 113, "HDF5OutputParameter", "o", None, False),
            ("hinge_loss_param", 114, "HingeLossParameter", "o", None, False),
            ("image_data_param", 115, "ImageDataParameter", "o", None, False),
            ("infogain_loss_param", 116, "InfogainLossParameter", "o", None, False),
            ("inner_product_param", 117, "InnerProductParameter", "o", None, False),
            ("input_param", 143, "InputParameter", "o", None, False),
            ("log_param", 134, "LogParameter", "o", None, False),
            ("lrn_param", 118, "LRNParameter", "o", None, False),
            ("memory_data_param", 119, "MemoryDataParameter", "o", None, False),
            ("mvn_param", 120, "MVNParameter", "o", None, False),
            ("parameter_param", 145, "ParameterParameter", "o", None, False),
            ("pooling_param", 121, "PoolingParameter", "o", None, False),
            ("power_param", 122, "PowerParameter", "o", None, False),
            ("prelu_param", 131, "PReLUParameter", "o", None, False),
            ("python_param", 130, "PythonParameter", "o", None, False),
            ("recurrent_param", 146, "RecurrentParameter", "o", None, False),
            ("reduction_param", 136, "ReductionParameter", "o", None, False),
            ("relu_param", 123, "ReLUParameter", "o", None, False),
            ("reshape_param", 133, "ReshapeParameter", "o", None, False),
            ("scale_param", 142, "ScaleParameter", "o", None, False),
            ("sigmoid_param", 124, "SigmoidParameter", "o", None, False),
            ("softmax_param", 125, "SoftmaxParameter", "o", None, False),
            ("spp_param", 132, "SPPParameter", "o", None, False),
            ("slice_param", 126, "SliceParameter", "o", None, False),
            ("swish_param", 147, "SwishParameter", "o", None, False),
            ("tanh_param", 127, "TanHParameter", "o", None, False),
            ("threshold_param", 128, "ThresholdParameter", "o", None, False),
            ("tile_param", 138, "TileParameter", "o", None, False),
            ("window_data_param", 129, "WindowDataParameter", "o", None, False),
        ]
    },
    "TransformationParameter": {
        "fields": [
            ("scale", 1, "float", "o", 1.0, False),
            ("mirror", 2, "bool", "o", False, False),
            ("crop_size", 3, "uint32", "o", 0, False),
            ("mean_file", 4, "string", "o", None, False),
            ("mean_value", 5, "float", "r", None, False),
            ("force_color", 6, "bool", "o", False, False),
            ("force_gray", 7, "bool", "o", False, False),
        ]
    },
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
            ("filler", 3, _FILLER, "o", None, False),
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
            ("weight_filler", 7, _FILLER, "o", None, False),
            ("bias_filler", 8, _FILLER, "o", None, False),
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
            ("data_filler", 1, _FILLER, "r", None, False),
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
            ("weight_filler", 4, _FILLER, "o", None, False),
            ("bias_filler", 5, _FILLER, "o", None, False),
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
            ("weight_filler", 3, _FILLER, "o", None, False),
            ("bias_filler", 4, _FILLER, "o", None, False),
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
            ("filler", 1, _FILLER, "o", None, False),
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
            ("weight_filler", 2, _FILLER, "o", None, False),
            ("bias_filler", 3, _FILLER, "o", None, False),
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
            ("filler", 3, _FILLER, "o", None, False),
            ("bias_term", 4, "bool", "o", False, False),
            ("bias_filler", 5, _FILLER, "o", None, False),
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
    "V1LayerParameter": {
        "enums": {
            "LayerType": {
                "NONE": 0,
                "ABSVAL": 35,
                "ACCURACY": 1,
                "ARGMAX": 30,
                "BNLL": 2,
                "CONCAT": 3,
                "CONTRASTIVE_LOSS": 37,
                "CONVOLUTION": 4,
                "DATA": 5,
                "DECONVOLUTION": 39,
                "DROPOUT": 6,
                "DUMMY_DATA": 32,
                "EUCLIDEAN_LOSS": 7,
                "ELTWISE": 25,
                "EXP": 38,
                "FLATTEN": 8,
                "HDF5_DATA": 9,
                "HDF5_OUTPUT": 10,
                "HINGE_LOSS": 28,
                "IM2COL": 11,
                "IMAGE_DATA": 12,
                "INFOGAIN_LOSS": 13,
                "INNER_PRODUCT": 14,
                "LRN": 15,
                "MEMORY_DATA": 29,
                "MULTINOMIAL_LOGISTIC_LOSS": 16,
                "MVN": 34,
                "POOLING": 17,
                "POWER": 26,
                "RELU": 18,
                "SIGMOID": 19,
                "SIGMOID_CROSS_ENTROPY_LOSS": 27,
                "SILENCE": 36,
                "SOFTMAX": 20,
                "SOFTMAX_LOSS": 21,
                "SPLIT": 22,
                "SLICE": 33,
                "TANH": 23,
                "WINDOW_DATA": 24,
                "THRESHOLD": 31,
            },
            "DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
        },
        "fields": [
            ("bottom", 2, "string", "r", None, False),
            ("top", 3, "string", "r", None, False),
            ("name", 4, "string", "o", None, False),
            ("include", 32, "NetStateRule", "r", None, False),
            ("exclude", 33, "NetStateRule", "r", None, False),
            ("type", 5, "V1LayerParameter.LayerType", "o", None, False),
            ("blobs", 6, "BlobProto", "r", None, False),
            ("param", 1001, "string", "r", None, False),
            ("blob_share_mode", 1002, "V1LayerParameter.DimCheckMode", "r", None, False),
            ("blobs_lr", 7, "float", "r", None, False),
            ("weight_decay", 8, "float", "r", None, False),
            ("loss_weight", 35, "float", "r", None, False),
            ("accuracy_param", 27, "AccuracyParameter", "o", None, False),
            ("argmax_param", 23, "ArgMaxParameter", "o", None, False),
            ("concat_param", 9, "ConcatParameter", "o", None, False),
            ("contrastive_loss_param", 40, "ContrastiveLossParameter", "o", None, False),
            ("convolution_param", 10, "ConvolutionParameter", "o", None, False),
            ("data_param", 11, "DataParameter", "o", None, False),
            ("dropout_param", 12, "DropoutParameter", "o", None, False),
            ("dummy_data_param", 26, "DummyDataParameter", "o", None, False),
            ("eltwise_param", 24, "EltwiseParameter", "o", None, False),
            ("exp_param", 41, "ExpParameter", "o", None, False),
            ("hdf5_data_param", 13, "HDF5DataParameter", "o", None, False),
            ("hdf5_output_param", 14, "HDF5OutputParameter", "o", None, False),
            ("hinge_loss_param", 29, "HingeLossParameter", "o", None, False),
            ("image_data_param", 15, "ImageDataParameter", "o", None, False),
            ("infogain_loss_param", 16, "InfogainLossParameter", "o", None, False),
            ("inner_product_param", 17, "InnerProductParameter", "o", None, False),
            ("lrn_param", 18, "LRNParameter", "o", None, False),
            ("memory_data_param", 22, "MemoryDataParameter", "o", None, False),
            ("mvn_param", 34, "MVNParameter", "o", None, False),
            ("pooling_param", 19, "PoolingParameter", "o", None, False),
            ("power_param", 21, "PowerParameter", "o", None, False),
            ("relu_param", 30, "ReLUParameter", "o", None, False),
            ("sigmoid_param", 38, "SigmoidParameter", "o", None, False),
            ("softmax_param", 39, "SoftmaxParameter", "o", None, False),
            ("slice_param", 31, "SliceParameter", "o", None, False),
            ("tanh_param", 37, "TanHParameter", "o", None, False),
            ("threshold_param", 25, "ThresholdParameter", "o", None, False),
            ("window_data_param", 20, "WindowDataParameter", "o", None, False),
            ("transform_param", 36, "TransformationParameter", "o", None, False),
            ("loss_param", 42, "LossParameter", "o", None, False),
            ("layer", 1, "V0LayerParameter", "o", None, False),
        ],
    },
    # The 2013 layer message. Only recognised (so such files give a clear "not supported" error
    # rather than a parse error); its numeric fields are kept for completeness of the wire format.
    "V0LayerParameter": {
        "fields": [
            ("name", 1, "string", "o", None, False),
            ("type", 2, "string", "o", None, False),
            ("num_output", 3, "uint32", "o", None, False),
            ("biasterm", 4, "bool", "o", True, False),
            ("pad", 7, "uint32", "o", 0, False),
            ("kernelsize", 8, "uint32", "o", None, False),
            ("group", 9, "uint32", "o", 1, False),
            ("stride", 10, "uint32", "o", 1, False),
            ("blobs", 50, "BlobProto", "r", None, False),
        ]
    },
}

TOP_LEVEL_ENUMS = {"Phase": ["TRAIN", "TEST"]}

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}


def _enum_values(table) -> list[tuple[str, int]]:
    if isinstance(table, dict):
        return list(table.items())
    return [(name, i) for i, name in enumerate(table)]


def _add_enum(container, name: str, table) -> None:
    enum = container.enum_type.add(name=name)
    for value_name, number in _enum_values(table):
        enum.value.add(name=value_name, number=number)


def _is_enum(type_name: str) -> bool:
    if type_name in TOP_LEVEL_ENUMS:
        return True
    parent, _, child = type_name.partition(".")
    return bool(child) and child in SCHEMA.get(parent, {}).get("enums", {})


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="caffe_mfv_port/caffe.proto", package=_PACKAGE, syntax="proto2"
    )
    for name, table in TOP_LEVEL_ENUMS.items():
        _add_enum(proto, name, table)
    for msg_name, spec in SCHEMA.items():
        msg = proto.message_type.add(name=msg_name)
        for enum_name, table in spec.get("enums", {}).items():
            _add_enum(msg, enum_name, table)
        for name, number, type_name, label, default, packed in spec["fields"]:
            field = msg.field.add(name=name, number=number)
            field.label = (
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if label == "r"
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            elif _is_enum(type_name):
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                field.type_name = f".{_PACKAGE}.{type_name}"
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{type_name}"
            if default is not None:
                field.default_value = (
                    str(default).lower() if isinstance(default, bool) else str(default)
                )
            if packed:
                field.options.packed = True
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def message_class(name: str):
    """The generated protobuf class of one Caffe message, e.g. ``message_class("NetParameter")``."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


class Schema:
    """A Caffe schema: Caffe 1.0's, or Caffe 1.0's plus a fork's ``caffe.proto`` additions.

    ``source`` is the fork's .proto path and ``text`` its content (None / "" for Caffe 1.0's), kept
    so a converted artefact can rebuild the same schema. ``added`` names the fork's additions.
    """

    def __init__(
        self, pool, *, source: str | None = None, text: str = "", added: tuple[str, ...] = ()
    ) -> None:
        self.pool = pool
        self.source = source
        self.text = text
        self.added = added

    # A schema never changes once built: copies share it, pickles rebuild it from its text.
    def __copy__(self) -> Schema:
        return self

    def __deepcopy__(self, memo) -> Schema:
        return self

    def __reduce__(self):
        if self.source is None:
            return (_caffe_schema, ())
        return (_fork_schema, (self.text, self.source))

    def message(self, name: str):
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        )

    @property
    def NetParameter(self):  # noqa: N802 - the protobuf message's name
        return self.message("NetParameter")

    @property
    def LayerParameter(self):  # noqa: N802
        return self.message("LayerParameter")

    @property
    def V1LayerParameter(self):  # noqa: N802
        return self.message("V1LayerParameter")


CAFFE = Schema(_POOL)


def _caffe_schema() -> Schema:
    return CAFFE


def _fork_schema(text: str, path: str) -> Schema:
    return schema_from_proto_text(text, path=path)


_FORKS: dict[tuple[str, str], Schema] = {}


def schema_from_proto_text(text: str, *, path: str = "<proto>") -> Schema:
    """Caffe 1.0's schema extended with a fork's ``caffe.proto`` (its text), without protoc.

    Raises
    ------
    CaffeError
        When the file uses what the reader does not support, conflicts with Caffe's field numbers
        or names an unknown type; the message names the file, line and field.
    """
    from .errors import CaffeError
    from .protofile import merge_into, parse_proto

    key = (path, text)
    if key in _FORKS:
        return _FORKS[key]
    base = _build_file()
    base.name = "caffe_mfv_port/fork_caffe.proto"
    added = merge_into(base, parse_proto(text, path=path, base=base), path=path)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(base)
    except (TypeError, ValueError) as exc:
        raise CaffeError(f"the fork's schema does not build: {exc}", path=path) from None
    schema = Schema(pool, source=path, text=text, added=tuple(added))
    _FORKS[key] = schema
    return schema


def load_proto(path) -> Schema:
    """Caffe 1.0's schema extended with the fork ``caffe.proto`` at ``path`` (see
    :func:`schema_from_proto_text`)."""
    from .limits import read_text

    text = read_text(path, "proto")
    return schema_from_proto_text(text, path=str(path))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")
