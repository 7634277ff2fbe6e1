/* Entry points of the BNNS API that the portable backend does not implement yet: they exist so
   every declared symbol resolves, and fail the way BNNS fails (NULL) with a reason. */
#include "internal.h"

BNNSFilter BNNSFilterCreateLayerFullyConnected(const BNNSLayerParametersFullyConnected *layer_params,
                                               const BNNSFilterParameters *filter_params) {
    (void)layer_params;
    (void)filter_params;
    bp_set_error("BNNSFilterCreateLayerFullyConnected is not implemented by the portable backend yet");
    return NULL;
}

BNNSFilter BNNSFilterCreateConvolutionLayer(const BNNSImageStackDescriptor *in_desc,
                                            const BNNSImageStackDescriptor *out_desc,
                                            const BNNSConvolutionLayerParameters *layer_params,
                                            const BNNSFilterParameters *filter_params) {
    (void)in_desc;
    (void)out_desc;
    (void)layer_params;
    (void)filter_params;
    bp_set_error("BNNSFilterCreateConvolutionLayer is not implemented by the portable backend yet");
    return NULL;
}

BNNSFilter BNNSFilterCreateFullyConnectedLayer(const BNNSVectorDescriptor *in_desc,
                                               const BNNSVectorDescriptor *out_desc,
                                               const BNNSFullyConnectedLayerParameters *layer_params,
                                               const BNNSFilterParameters *filter_params) {
    (void)in_desc;
    (void)out_desc;
    (void)layer_params;
    (void)filter_params;
    bp_set_error("BNNSFilterCreateFullyConnectedLayer is not implemented by the portable backend yet");
    return NULL;
}
