// Runtime values -> template parameters.
#pragma once

#define JFA_BOOL_SWITCH(COND, NAME, ...)      \
    [&] {                                     \
        if (COND) {                           \
            constexpr static bool NAME = true;  \
            return __VA_ARGS__();             \
        } else {                              \
            constexpr static bool NAME = false; \
            return __VA_ARGS__();             \
        }                                     \
    }()
