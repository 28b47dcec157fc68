# Included by CMake right after `project(ggml)` (pysparsek passes CMAKE_PROJECT_ggml_INCLUDE), in both the stock
# and the patched build, so the two stay comparable.
#
# ggml's native x86 build compiles with -march=native. On CPUs with AMX that also compiles ggml's AMX kernels, and
# at the pinned commit those die with SIGILL in worker threads (tile-data permission is requested for the main
# thread only, and the tile configuration can be optimised away: ggml-org/llama.cpp#26954). Appending -mno-amx-*
# after -march=native leaves the AMX kernels out and keeps every other native instruction set, so the build
# produces the same code on CPUs with and without AMX.

function(pysparsek_leave_out_amx)
    if (NOT TARGET ggml-cpu)
        return()
    endif()
    if (NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i686)$")
        return()
    endif()
    if (NOT CMAKE_C_COMPILER_ID MATCHES "GNU|Clang" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
        return()
    endif()
    target_compile_options(ggml-cpu PRIVATE -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
    message(STATUS "pysparsek: AMX left out of ggml-cpu (-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)")
endfunction()

# ggml-cpu does not exist yet: run once the ggml directory (and its subdirectories) have been processed,
# so these options come after ggml's own -march=native on the command line.
cmake_language(DEFER CALL pysparsek_leave_out_amx)
