#include "runtime/core/dtype.hpp"

namespace ferry {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i8:
      return "i8";
    case DType::u8:
      return "u8";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::boolean:
      return "bool";
    case DType::q8:
      return "q8";
    case DType::q4_g64:
      return "q4g64";
    case DType::q4_g128:
      return "q4g128";
    case DType::q8_0:
      return "q8_0";
    case DType::q4_0:
      return "q4_0";
    case DType::q4_1:
      return "q4_1";
    case DType::q5_0:
      return "q5_0";
    case DType::q5_1:
      return "q5_1";
    case DType::q4_k:
      return "q4_k";
    case DType::q5_k:
      return "q5_k";
    case DType::q6_k:
      return "q6_k";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "fp32") return DType::f32;
  if (name == "f16" || name == "float16" || name == "fp16" || name == "half") return DType::f16;
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  if (name == "i8" || name == "int8") return DType::i8;
  if (name == "u8" || name == "uint8") return DType::u8;
  if (name == "i32" || name == "int32") return DType::i32;
  if (name == "i64" || name == "int64") return DType::i64;
  if (name == "bool") return DType::boolean;
  if (name == "q8") return DType::q8;
  if (name == "q4g64") return DType::q4_g64;
  if (name == "q4g128") return DType::q4_g128;
  for (DType t : {DType::q8_0, DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1, DType::q4_k,
                  DType::q5_k, DType::q6_k}) {
    if (name == dtype_name(t)) return t;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors(std::string_view tag) {
  if (tag == "F32") return DType::f32;
  if (tag == "F16") return DType::f16;
  if (tag == "BF16") return DType::bf16;
  if (tag == "I8") return DType::i8;
  if (tag == "U8") return DType::u8;
  if (tag == "I32") return DType::i32;
  if (tag == "I64") return DType::i64;
  if (tag == "BOOL") return DType::boolean;
  return std::nullopt;
}

std::string_view dtype_to_safetensors(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i8:
      return "I8";
    case DType::u8:
      return "U8";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::boolean:
      return "BOOL";
    case DType::q8:
    case DType::q4_g64:
    case DType::q4_g128:
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k:
    case DType::q6_k:
      break;  // packed dtypes exist only in ferry packs and GGUF files
  }
  return "?";
}

}  // namespace ferry
