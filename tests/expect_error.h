// Test helpers for the errors qdit throws: the message of the error a call raises, and an
// expectation that a call raises one naming something.
#pragma once
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "core/error.h"

namespace qdit::testutil {

// What fn throws as an E (any qdit::Error by default), or a text saying it threw none.
template <typename E = Error>
std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const E& e) {
        return e.what();
    }
    return "no error of the expected type";
}

// fn must throw a qdit::Error whose message contains `needle`.
template <typename Fn>
void expect_error_mentioning(Fn&& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

}  // namespace qdit::testutil
