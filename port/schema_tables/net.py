"""Caffe 1.0's blobs, net, rule, parameter and transformation messages (see port.schema_tables)."""

from __future__ import annotations

FILLER = "FillerParameter"

NET: dict[str, dict] = {
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
}
