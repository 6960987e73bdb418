// The text forms of a frame layout, one home each: which names are .npy members, the frame
// shape grammar (xattrs, -o frame=), how shapes and dtypes are shown, and whether a layout
// can grow frame by frame. The daemon, the npz tool, growing members and the appender all
// call these, so a shape typed in one place means the same everywhere.
//
// Plain functions over values: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/npy_header.h"
#include "npzfs/status.h"

namespace npzfs {

// True for names whose members are frame-structured .npy files: every name that ends in
// ".npy", the bare ".npy" included (numpy's key for it is "").
bool IsNpyName(std::string_view name);

// numpy's key of a member: its name without ".npy" ("rx.npy" and "rx" are both "rx").
std::string_view NumpyKey(std::string_view name);

// The frame shape grammar: positive axes separated by ',' or 'x' ("256,1024", "256x1024"),
// Python tuple notation and spaces tolerated ("(256, 1024)", "(7,)"); "" or "()" is a frame
// of one scalar. EINVAL naming the text and the bad axis otherwise (a zero axis would make
// frames of zero bytes, which can never be counted).
Result<std::vector<uint64_t>> ParseFrameShape(std::string_view text);

// A shape as numpy prints it: "(256, 1024)", "(7,)", "()".
std::string ShapeText(const std::vector<uint64_t>& shape);
// A frame shape in the form ParseFrameShape reads and the user.npy.shape xattr shows:
// "256,1024" ("" for a scalar frame).
std::string AxesText(const std::vector<uint64_t>& shape);

// The dtype as numpy users write it: "<i2" rather than the literal "'<i2'"; a structured
// descr keeps its literal ("[('a', '<i4')]").
std::string DtypeText(const NpyHeader& header);

// A numpy dtype name ("int16", "float32", "uint8", "complex64", "bool", ...) as the
// little-endian descr numpy would write for it ("<i2"); any other text is returned as it is
// (a descr string such as ">f8" or a structured literal), for NpyHeader::ForFrames to check.
std::string DescrForDtypeName(std::string_view dtype);

// Whether frames of `header` can be appended one at a time: not an object array (its data is
// a pickle), not 0-d (no growth axis), frames of at least one byte whose size fits 64 bits.
// EINVAL naming `name` otherwise.
Status CheckGrowable(const NpyHeader& header, const std::string& name);

// The descr for frames of `dtype` (a numpy dtype name or a descr, as DescrForDtypeName takes
// it), checked as frames of one item: a descr ForFrames accepts and CheckGrowable passes.
// EINVAL naming `name` otherwise. The one check behind -o frame= and user.npy.descr.
Result<std::string> GrowableDescr(std::string_view dtype, const std::string& name);

}  // namespace npzfs
