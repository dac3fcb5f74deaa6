// The host emulator's CUB (tests/emu/shim/emu_cub.h).
#pragma once
#include "emu_cub.h"
