// error_text<E>(f): runs f, expects it to throw E, and returns the message for matchers.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <typeinfo>

namespace ferry::test {

template <class E, class F>
std::string error_text(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected " << typeid(E).name() << " but got " << typeid(e).name() << ": "
                  << e.what();
    return {};
  }
  ADD_FAILURE() << "expected " << typeid(E).name() << " but nothing was thrown";
  return {};
}

}  // namespace ferry::test
