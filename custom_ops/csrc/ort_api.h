// The only way edgeq sources include ONNX Runtime's C++ API.
//
// ORT_API_MANUAL_INIT must be defined in every translation unit that sees an ORT header: without it the header
// initialises Ort::Global<void>::api_ from OrtGetApiBase(), which makes the library depend on that symbol and
// fail to load into the onnxruntime Python module. RegisterCustomOps calls Ort::InitApi instead. Routing every
// include through this file is what keeps the rule from being forgotten in a new file.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>
