#include "core/npy/frame_layout.h"

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

namespace npzfs {
namespace {

constexpr std::string_view kNpySuffix = ".npy";

// numpy's dtype names and the descr np.dtype(name).str gives on a little-endian machine.
constexpr std::pair<std::string_view, std::string_view> kDtypeNames[] = {
    {"bool", "|b1"},        {"int8", "|i1"},        {"uint8", "|u1"},     {"int16", "<i2"},
    {"uint16", "<u2"},      {"int32", "<i4"},       {"uint32", "<u4"},    {"int64", "<i8"},
    {"uint64", "<u8"},      {"float16", "<f2"},     {"float32", "<f4"},   {"float64", "<f8"},
    {"float128", "<f16"},   {"longdouble", "<f16"}, {"complex64", "<c8"}, {"complex128", "<c16"},
    {"complex256", "<c32"}, {"half", "<f2"},        {"single", "<f4"},    {"double", "<f8"},
    {"float", "<f8"},       {"int", "<i8"},         {"complex", "<c16"},  {"byte", "|i1"},
    {"ubyte", "|u1"},       {"short", "<i2"},       {"ushort", "<u2"},    {"intc", "<i4"},
    {"uintc", "<u4"},       {"longlong", "<i8"},    {"ulonglong", "<u8"}, {"csingle", "<c8"},
    {"cdouble", "<c16"},
};

std::string Join(const std::vector<uint64_t>& shape, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += separator;
    out += std::to_string(shape[i]);
  }
  return out;
}

}  // namespace

bool IsNpyName(std::string_view name) { return name.ends_with(kNpySuffix); }

std::string_view NumpyKey(std::string_view name) {
  return IsNpyName(name) ? name.substr(0, name.size() - kNpySuffix.size()) : name;
}

Result<std::vector<uint64_t>> ParseFrameShape(std::string_view text) {
  std::string t(text);
  t.erase(std::remove_if(t.begin(), t.end(), [](char c) { return c == ' ' || c == '\t'; }),
          t.end());
  if (t.size() >= 2 && t.front() == '(' && t.back() == ')') t = t.substr(1, t.size() - 2);
  if (!t.empty() && t.back() == ',') t.pop_back();  // "(7,)"
  std::vector<uint64_t> shape;
  if (t.empty()) return shape;
  size_t pos = 0;
  while (true) {
    const size_t sep = t.find_first_of(",x", pos);
    const std::string axis = t.substr(pos, sep == std::string::npos ? sep : sep - pos);
    uint64_t v = 0;
    bool digits = !axis.empty();
    for (char c : axis) {
      if (c < '0' || c > '9' || v > (std::numeric_limits<uint64_t>::max() - 9) / 10) {
        digits = false;
        break;
      }
      v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!digits || v == 0) {
      return Status::Error(EINVAL, "frame shape '" + std::string(text) + "': axis '" + axis +
                                       "' is not a positive integer (axes are separated by "
                                       "'x' or ',', e.g. 256x1024)");
    }
    shape.push_back(v);
    if (sep == std::string::npos) break;
    pos = sep + 1;
  }
  return shape;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  return "(" + Join(shape, ", ") + (shape.size() == 1 ? ",)" : ")");
}

std::string AxesText(const std::vector<uint64_t>& shape) { return Join(shape, ","); }

std::string DtypeText(const NpyHeader& header) {
  const std::string& lit = header.descr_literal();
  if (lit.size() >= 2 && (lit.front() == '\'' || lit.front() == '"') && lit.back() == lit.front()) {
    return lit.substr(1, lit.size() - 2);
  }
  return lit;
}

std::string DescrForDtypeName(std::string_view dtype) {
  for (const auto& [name, descr] : kDtypeNames) {
    if (dtype == name) return std::string(descr);
  }
  return std::string(dtype);
}

Result<std::string> GrowableDescr(std::string_view dtype, const std::string& name) {
  std::string descr = DescrForDtypeName(dtype);
  auto item = NpyHeader::ForFrames(descr, {1}, /*fortran_order=*/false, 0);
  if (!item.ok()) return item.status().WithContext(name);
  NPZ_RETURN_IF_ERROR(CheckGrowable(*item, name));
  return descr;
}

Status CheckGrowable(const NpyHeader& header, const std::string& name) {
  if (header.has_object()) {
    return Status::Error(EINVAL, name + ": object arrays (descr " + header.descr_literal() +
                                     ") are pickles and cannot grow frame by frame");
  }
  if (!header.frameable()) {
    return Status::Error(EINVAL, name + ": a 0-d array has no growth axis and cannot grow");
  }
  if (!header.WithFrameCountChecked(1).ok()) {
    return Status::Error(EINVAL, name + ": a frame of shape " + ShapeText(header.frame_shape()) +
                                     " does not fit in 64 bits");
  }
  if (header.frame_bytes() == 0) {
    return Status::Error(EINVAL, name + ": frames of zero bytes (shape " +
                                     ShapeText(header.shape()) +
                                     ") cannot be counted as they grow");
  }
  return Status::Ok();
}

}  // namespace npzfs
