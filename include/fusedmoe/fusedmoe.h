// Umbrella header.
#pragma once

#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"
#include "fusedmoe/dtype.h"
#include "fusedmoe/error.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/factory.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/kernel.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/quant.h"
#include "fusedmoe/reference.h"
#include "fusedmoe/routing.h"
#include "fusedmoe/stream.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/weights.h"
#include "fusedmoe/workspace.h"
