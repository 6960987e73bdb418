// Tests for GrowingMember: header-first and declared layouts, what readers see (compared with
// numpy's own np.save bytes), the append-only rules and their errno, and Resume after a crash.
#include "core/write/growing_member.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::RunPython;
using testing::SmallTmpfs;
using testing::TempDir;
using testing::WriteFileOrDie;

std::span<const std::byte> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Frames of '<u2' values: element k of frame i is (i * elems + k) mod 65536, exactly what
// np.arange(n * elems).astype('<u2') holds.
std::string U16Frames(uint64_t first, uint64_t count, uint64_t elems) {
  std::string out;
  for (uint64_t v = first * elems; v < (first + count) * elems; ++v) {
    out += static_cast<char>(v & 0xff);
    out += static_cast<char>((v >> 8) & 0xff);
  }
  return out;
}

// np.save bytes of `n` frames of shape (3, 4) (or the given frame shape literal).
std::string NumpyU16(uint64_t n, const std::string& frame_shape = "3, 4", bool fortran = false) {
  // Each distinct array is generated once: starting python dominates the run time.
  static std::map<std::string, std::string> cache;
  const std::string key = std::to_string(n) + "/" + frame_shape + "/" + (fortran ? "F" : "C");
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  TempDir dir;
  std::string path = dir.Join("ref.npy");
  RunPython("import numpy as np\nfs = (" + frame_shape + ",)\nn = " + std::to_string(n) +
            "\ncount = int(np.prod(fs))\n"
            "a = np.arange(n * count).astype('<u2')\n" +
            (fortran ? "a = np.asfortranarray(np.moveaxis(a.reshape((n,) + fs), 0, -1))\n"
                     : "a = a.reshape((n,) + fs)\n") +
            "np.save('" + path + "', a)\n");
  return cache[key] = ReadFileOrDie(path);
}

std::string ReadVisible(const GrowingMember& m) {
  std::string out(m.visible_size(), '\0');
  auto n = m.ReadAt(0, std::span(reinterpret_cast<std::byte*>(out.data()), out.size()));
  EXPECT_TRUE(n.ok()) << n.status().message();
  if (n.ok()) out.resize(*n);
  return out;
}

size_t HeaderLength(const std::string& npy) { return *NpyHeader::TotalLength(npy); }

struct Fixture {
  TempDir dir;
  std::vector<std::string> log;
  std::shared_ptr<GrowingMember> Create(const std::string& name,
                                        std::optional<NpyHeader> declared = {},
                                        HeaderWriteFn write_header = {}) {
    auto m = GrowingMember::Create(
        name, dir.Join(name), std::move(declared),
        [this](const std::string& l) { log.push_back(l); }, std::move(write_header));
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? *m : nullptr;
  }
  std::shared_ptr<GrowingMember> Resume(const std::string& name, const std::string& path) {
    auto m = GrowingMember::Resume(name, path, [this](const std::string& l) { log.push_back(l); });
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? *m : nullptr;
  }
};

Status WriteAt(GrowingMember& m, WriterSession& w, uint64_t off, std::string_view bytes) {
  auto r = m.Write(&w, off, Bytes(bytes));
  if (!r.ok()) return r.status();
  EXPECT_EQ(*r, bytes.size());
  return Status::Ok();
}

NpyHeader U16Layout(std::vector<uint64_t> frame = {3, 4}) {
  return *NpyHeader::ForFrames("<u2", std::move(frame), false, 0);
}

TEST(GrowingMember, HeaderFirstInOneWriteShowsNumpysOwnBytes) {
  Fixture f;
  auto m = f.Create("adc.npy");
  const std::string ref = NumpyU16(5);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, ref).ok());
  EXPECT_EQ(m->frame_count(), 5u);
  EXPECT_EQ(m->visible_size(), ref.size());
  EXPECT_EQ(ReadVisible(*m), ref);
  // The spool file has the same bytes, so it is a valid .npy by itself.
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), ref);
  m->EndWrite(&w);
}

TEST(GrowingMember, HeaderSplitAcrossManyWritesIsBufferedUntilComplete) {
  Fixture f;
  auto m = f.Create("adc.npy");
  const std::string ref = NumpyU16(4);
  const size_t header = HeaderLength(ref);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  for (size_t off = 0; off < ref.size(); off += 7) {
    std::string chunk = ref.substr(off, 7);
    ASSERT_TRUE(WriteAt(*m, w, off, chunk).ok()) << "at " << off;
    if (off + chunk.size() < header) {
      EXPECT_EQ(m->visible_size(), 0u) << "a partial header is never visible";
      EXPECT_FALSE(m->layout().has_value());
    }
  }
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, AWriterHeaderOfAnotherLengthMapsItsOffsetsToTheCanonicalLayout) {
  Fixture f;
  auto m = f.Create("old.npy");
  const std::string ref = NumpyU16(6);
  const std::string data = ref.substr(HeaderLength(ref));
  // Old numpy (< 1.9) padded the header to 16 bytes and left no growth room.
  std::string dict = "{'descr': '<u2', 'fortran_order': False, 'shape': (99, 3, 4), }";
  size_t total = 10 + dict.size() + 1;
  dict += std::string((16 - total % 16) % 16, ' ') + "\n";
  std::string old_header = std::string("\x93NUMPY\x01\x00", 8);
  old_header += static_cast<char>(dict.size() & 0xff);
  old_header += static_cast<char>(dict.size() >> 8);
  old_header += dict;
  ASSERT_NE(old_header.size(), HeaderLength(ref));

  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, old_header + data.substr(0, 30)).ok());
  // The writer continues at its own offsets (or at the visible end, see below), not at the
  // canonical offset of its last complete frame.
  Status wrong = WriteAt(*m, w, HeaderLength(ref) + 24, data.substr(30));
  EXPECT_EQ(wrong.code(), EPERM);
  ASSERT_TRUE(WriteAt(*m, w, old_header.size() + 30, data.substr(30)).ok());
  EXPECT_EQ(m->frame_count(), 6u) << "the writer's count (99) is ignored";
  EXPECT_EQ(ReadVisible(*m), ref);
  // Rewriting its own (old-length) header in place is accepted and ignored.
  EXPECT_TRUE(WriteAt(*m, w, 0, old_header).ok());
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, FortranOrderGrowsAlongTheLastAxis) {
  Fixture f;
  auto m = f.Create("f.npy");
  const std::string ref = NumpyU16(7, "3, 4", /*fortran=*/true);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, ref).ok());
  ASSERT_TRUE(m->layout().has_value());
  EXPECT_TRUE(m->layout()->fortran_order());
  EXPECT_EQ(m->frame_count(), 7u);
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, ADeclaredLayoutTakesRawFramesAndShowsAnEmptyArrayAtOnce) {
  Fixture f;
  auto m = f.Create("raw.npy", U16Layout());
  const std::string empty = NumpyU16(0);
  EXPECT_EQ(ReadVisible(*m), empty) << "header with count 0 before any write";
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), empty);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string frames = U16Frames(0, 9, 12);
  for (size_t off = 0; off < frames.size(); off += 50) {
    ASSERT_TRUE(WriteAt(*m, w, off, frames.substr(off, 50)).ok());
  }
  EXPECT_EQ(ReadVisible(*m), NumpyU16(9));
}

TEST(GrowingMember, XattrsDeclareTheLayoutBeforeTheFirstWrite) {
  Fixture f;
  auto m = f.Create("x.npy");
  EXPECT_EQ(m->GetAttribute(kDescrAttribute).status().code(), ENODATA);
  ASSERT_TRUE(m->SetAttribute(kShapeAttribute, "3x4").ok());
  EXPECT_FALSE(m->layout().has_value()) << "shape alone is not a layout";
  ASSERT_TRUE(m->SetAttribute(kDescrAttribute, "<u2\n").ok());
  ASSERT_TRUE(m->layout().has_value());
  EXPECT_EQ(*m->GetAttribute(kDescrAttribute), "<u2");
  EXPECT_EQ(*m->GetAttribute(kShapeAttribute), "3,4");
  EXPECT_EQ(m->ListAttributes().size(), 3u);
  EXPECT_EQ(m->SetAttribute(kShapeAttribute, "3,,4").code(), EINVAL);
  EXPECT_EQ(m->SetAttribute(kDescrAttribute, "not a dtype").code(), EINVAL);
  EXPECT_EQ(m->SetAttribute("user.other", "1").code(), ENOTSUP);

  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(2));
  // Once data exists the layout is fixed; restating it is fine.
  EXPECT_EQ(m->SetAttribute(kDescrAttribute, "<f8").code(), EPERM);
  EXPECT_EQ(m->SetAttribute(kShapeAttribute, "4,3").code(), EPERM);
  EXPECT_TRUE(m->SetAttribute(kShapeAttribute, "3,4").ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(2));
}

TEST(GrowingMember, AVerbatimMemberHasNoLayoutAttributes) {
  Fixture f;
  auto m = f.Create("meta.json");
  EXPECT_EQ(m->SetAttribute(kDescrAttribute, "<u2").code(), ENOTSUP);
  EXPECT_EQ(GrowingMember::Create("meta.json", f.dir.Join("other"), U16Layout()).status().code(),
            EINVAL);
}

TEST(GrowingMember, APartialFrameIsHeldBackUntilItCompletes) {
  Fixture f;
  auto m = f.Create("p.npy", U16Layout());
  const size_t h = HeaderLength(NumpyU16(0));
  const std::string frames = U16Frames(0, 3, 12);  // 24 bytes per frame
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, frames.substr(0, 10)).ok());
  EXPECT_EQ(m->frame_count(), 0u);
  EXPECT_EQ(m->visible_size(), h);
  EXPECT_EQ(m->data_bytes(), 10u);
  ASSERT_TRUE(WriteAt(*m, w, 10, frames.substr(10, 14)).ok());
  EXPECT_EQ(m->frame_count(), 1u);
  EXPECT_EQ(ReadVisible(*m), NumpyU16(1));
  ASSERT_TRUE(WriteAt(*m, w, 24, frames.substr(24, 40)).ok());  // 2 frames + 16 bytes
  EXPECT_EQ(m->frame_count(), 2u);
  EXPECT_EQ(ReadVisible(*m), NumpyU16(2));
  // Reading past the visible end returns nothing of the held-back bytes.
  std::byte buf[64];
  auto n = m->ReadAt(m->visible_size(), buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  // The spool file holds the partial bytes and still loads in numpy (trailing bytes are ok).
  std::string out = RunPython("import numpy as np\nprint(np.load('" + m->spool_path() +
                              "', mmap_mode='r').shape)\n");
  EXPECT_EQ(out, "(2, 3, 4)\n");
  ASSERT_TRUE(WriteAt(*m, w, 64, frames.substr(64)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(3));
}

TEST(GrowingMember, ANpyWithoutALayoutIsEinvalWithAHowTo) {
  Fixture f;
  auto m = f.Create("nolayout.npy");
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  Status s = WriteAt(*m, w, 0, "hello world");
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_NE(s.message().find("nolayout.npy"), std::string::npos);
  EXPECT_NE(s.message().find("user.npy.descr"), std::string::npos);
  EXPECT_NE(s.message().find("frame="), std::string::npos);
  EXPECT_EQ(m->visible_size(), 0u);
  // A header afterwards still works.
  const std::string ref = NumpyU16(2);
  ASSERT_TRUE(WriteAt(*m, w, 0, ref).ok());
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, TheDescrAttributeTakesNumpyNamesAndRefusesABadDtypeAtOnce) {
  Fixture f;
  auto m = f.Create("cam.npy");
  for (const char* bad : {"garbage", "int17", "|O"}) {
    Status s = m->SetAttribute("user.npy.descr", bad);
    EXPECT_EQ(s.code(), EINVAL) << bad;
    EXPECT_NE(s.message().find("cam.npy: user.npy.descr"), std::string::npos) << s.message();
    EXPECT_FALSE(m->GetAttribute("user.npy.descr").ok()) << bad;
  }
  ASSERT_TRUE(m->SetAttribute("user.npy.descr", "uint16").ok());
  EXPECT_EQ(*m->GetAttribute("user.npy.descr"), "<u2");
  ASSERT_TRUE(m->SetAttribute("user.npy.shape", "2,3").ok());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, std::string(24, '\x01')).ok());
  EXPECT_NE(ReadVisible(*m).find("'descr': '<u2'"), std::string::npos);
}

TEST(GrowingMember, AnArrayThatCannotGrowIsKeptVerbatimAsNpSaveWroteIt) {
  Fixture f;
  TempDir py;
  RunPython("import numpy as np\nnp.save('" + py.Join("o.npy") +
            "', np.array([1, 'a'], dtype=object), allow_pickle=True)\nnp.save('" +
            py.Join("s.npy") + "', np.float64(3.5))\nnp.save('" + py.Join("z.npy") +
            "', np.zeros((4, 0)))\n");
  for (const char* name : {"o.npy", "s.npy", "z.npy"}) {
    SCOPED_TRACE(name);
    const std::string saved = ReadFileOrDie(py.Join(name));
    auto m = f.Create(name);
    WriterSession w;
    ASSERT_TRUE(m->BeginWrite(&w, false).ok());
    // In pieces: the header is collected first, then found not to grow.
    ASSERT_TRUE(WriteAt(*m, w, 0, saved.substr(0, 7)).ok());
    ASSERT_TRUE(WriteAt(*m, w, 7, saved.substr(7, 60)).ok());
    ASSERT_TRUE(WriteAt(*m, w, 67, saved.substr(67)).ok());
    EXPECT_EQ(ReadVisible(*m), saved);
    EXPECT_FALSE(m->is_npy());
    EXPECT_FALSE(m->layout().has_value());
    m->EndWrite(&w);
    auto fin = m->PrepareFinalize();
    ASSERT_TRUE(fin.ok()) << fin.status().message();
    EXPECT_EQ(fin->header, "");
    EXPECT_EQ(fin->data_length, saved.size());
    // A daemon that died keeps it verbatim.
    auto resumed = f.Resume(name, m->spool_path());
    ASSERT_NE(resumed, nullptr);
    EXPECT_EQ(ReadVisible(*resumed), saved);
  }
  EXPECT_NE(f.log.front().find("kept verbatim"), std::string::npos) << f.log.front();
  // After a restart, a header-only member's layout is no longer a declared one: np.save of
  // a 0-d array replaces it (the spool file's old header is not left in front).
  auto r = f.Create("r.npy", U16Layout());
  const std::string spool = r->spool_path();
  r.reset();
  auto resumed = f.Resume("r.npy", spool);
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->layout().has_value());
  WriterSession wr;
  ASSERT_TRUE(resumed->BeginWrite(&wr, false).ok());
  ASSERT_TRUE(WriteAt(*resumed, wr, 0, ReadFileOrDie(py.Join("s.npy"))).ok());
  EXPECT_EQ(ReadVisible(*resumed), ReadFileOrDie(py.Join("s.npy")));
  EXPECT_EQ(ReadFileOrDie(spool), ReadFileOrDie(py.Join("s.npy")));
  EXPECT_FALSE(resumed->layout().has_value());
  // A declared layout still refuses such a header.
  auto d = f.Create("d.npy", U16Layout());
  WriterSession wd;
  ASSERT_TRUE(d->BeginWrite(&wd, false).ok());
  EXPECT_EQ(WriteAt(*d, wd, 0, ReadFileOrDie(py.Join("s.npy"))).code(), EINVAL);
}

TEST(GrowingMember, AHeaderThatWasRefusedLeavesTheLayoutOpenToAttributes) {
  Fixture f;
  // A header that does not parse (an unknown dtype) is refused.
  std::string bad = NumpyU16(2);
  bad.replace(bad.find("'<u2'"), 5, "'<q7'");
  auto m = f.Create("g.npy");
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_EQ(WriteAt(*m, w, 0, bad).code(), EINVAL);
  // Nothing was taken, so the layout is not fixed: attributes may still declare it.
  ASSERT_TRUE(m->SetAttribute(kDescrAttribute, "<u2").ok());
  Status shape = m->SetAttribute(kShapeAttribute, "3,4");
  ASSERT_TRUE(shape.ok()) << shape.message();
  ASSERT_TRUE(m->layout().has_value());
  EXPECT_TRUE(m->layout()->SameFrameLayout(U16Layout()));
  // Declared: a truncate to 0 (a writer starting over) keeps it.
  ASSERT_TRUE(m->Truncate(0).ok());
  EXPECT_TRUE(m->layout().has_value());
}

TEST(GrowingMember, AHeaderThatContradictsTheDeclaredLayoutIsRejected) {
  Fixture f;
  auto m = f.Create("d.npy", U16Layout({4, 3}));
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  EXPECT_EQ(WriteAt(*m, w, 0, NumpyU16(2)).code(), EINVAL);
  // The matching header is accepted as a header, not as raw data.
  auto ok = f.Create("e.npy", U16Layout());
  WriterSession w2;
  ASSERT_TRUE(ok->BeginWrite(&w2, false).ok());
  ASSERT_TRUE(WriteAt(*ok, w2, 0, NumpyU16(2)).ok());
  EXPECT_EQ(ReadVisible(*ok), NumpyU16(2));
}

TEST(GrowingMember, ForbiddenOperationsReturnTheirErrnoAndLeaveTheDataIntact) {
  Fixture f;
  auto m = f.Create("guard.npy");
  const std::string ref = NumpyU16(4);
  const size_t h = HeaderLength(ref);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, ref).ok());
  ASSERT_TRUE(WriteAt(*m, w, ref.size(), "\x01\x02\x03").ok());  // partial frame
  const uint64_t end = ref.size() + 3;

  EXPECT_EQ(WriteAt(*m, w, h + 5, "zz").code(), EPERM) << "overwrite of data";
  EXPECT_EQ(WriteAt(*m, w, end + 1, "zz").code(), EPERM) << "a hole";
  EXPECT_EQ(WriteAt(*m, w, 0, "\x93NUMPY").code(), EPERM) << "part of the header";
  std::string other = NumpyU16(4, "4, 3").substr(0, h);
  ASSERT_EQ(HeaderLength(other), h);
  EXPECT_EQ(WriteAt(*m, w, 0, other).code(), EPERM) << "header with another layout";
  EXPECT_TRUE(WriteAt(*m, w, 0, ref.substr(0, h)).ok()) << "own header rewrite is accepted";
  EXPECT_EQ(m->Truncate(h).code(), EPERM);
  EXPECT_EQ(m->Truncate(0).code(), EPERM);
  EXPECT_EQ(m->Truncate(end + 10).code(), EPERM);
  EXPECT_TRUE(m->Truncate(m->visible_size()).ok());
  EXPECT_TRUE(m->Truncate(end).ok());
  EXPECT_EQ(m->CheckRemovable().code(), EPERM);
  WriterSession second;
  EXPECT_EQ(m->BeginWrite(&second, false).code(), EBUSY);
  EXPECT_EQ(m->Write(&second, end, Bytes("x")).status().code(), EBADF);

  EXPECT_EQ(ReadVisible(*m), ref);
  EXPECT_EQ(m->data_bytes(), ref.size() - h + 3);
  // And writing on at the end still works.
  ASSERT_TRUE(WriteAt(*m, w, end, U16Frames(4, 1, 12).substr(3)).ok());
  EXPECT_EQ(ReadVisible(*m),
            NumpyU16(5).substr(0, ref.size() + 24).replace(ref.size(), 3, "\x01\x02\x03"));
}

TEST(GrowingMember, OAppendWritesAppendWhateverTheOffset) {
  Fixture f;
  auto m = f.Create("app.npy");
  const std::string ref = NumpyU16(3);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, /*append=*/true).ok());
  ASSERT_TRUE(WriteAt(*m, w, 12345, ref.substr(0, 100)).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, ref.substr(100, 20)).ok());
  ASSERT_TRUE(WriteAt(*m, w, 7, ref.substr(120)).ok());
  EXPECT_EQ(ReadVisible(*m), ref);
  // A verbatim member in append mode too.
  auto v = f.Create("log.txt");
  WriterSession wv;
  ASSERT_TRUE(v->BeginWrite(&wv, true).ok());
  ASSERT_TRUE(WriteAt(*v, wv, 0, "one\n").ok());
  ASSERT_TRUE(WriteAt(*v, wv, 0, "two\n").ok());
  EXPECT_EQ(ReadVisible(*v), "one\ntwo\n");
}

TEST(GrowingMember, ALaterWriterAppendsInVisibleCoordinates) {
  Fixture f;
  auto m = f.Create("later.npy", U16Layout());
  const size_t h = HeaderLength(NumpyU16(0));
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12).substr(0, 30)).ok());  // 1 frame + 6
  m->EndWrite(&w);
  EXPECT_EQ(w.token, 0u);

  WriterSession w2;
  ASSERT_TRUE(m->BeginWrite(&w2, false).ok());
  EXPECT_EQ(WriteAt(*m, w2, 12, "xx").code(), EPERM) << "an overwrite in raw coordinates";
  EXPECT_EQ(WriteAt(*m, w2, h + 24, "xx").code(), EPERM) << "the partial frame counts";
  ASSERT_TRUE(WriteAt(*m, w2, h + 30, U16Frames(0, 4, 12).substr(30)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(4));
  // Its header is the canonical one: rewriting it in place is accepted.
  EXPECT_TRUE(WriteAt(*m, w2, 0, NumpyU16(4).substr(0, h)).ok());
}

TEST(GrowingMember, AWriterThatSeeksToTheEndOfAnEmptyDeclaredMemberAppendsThere) {
  Fixture f;
  auto m = f.Create("seek.npy", U16Layout());
  const uint64_t h = m->visible_size();  // lseek(fd, 0, SEEK_END) on the new file
  ASSERT_EQ(h, HeaderLength(NumpyU16(0)));
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string frames = U16Frames(0, 5, 12);
  ASSERT_TRUE(WriteAt(*m, w, h, frames.substr(0, 48)).ok());
  ASSERT_TRUE(WriteAt(*m, w, h + 48, frames.substr(48)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(5));
}

TEST(GrowingMember, ARawWriterResumesAtItsOwnEndInALaterSession) {
  Fixture f;
  auto m = f.Create("rec.npy", U16Layout());
  const std::string frames = U16Frames(0, 6, 12);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, frames.substr(0, 72)).ok());  // 3 frames
  m->EndWrite(&w);
  // dd if=raw of=rec.npy bs=24 seek=3 skip=3 conv=notrunc
  WriterSession w2;
  ASSERT_TRUE(m->BeginWrite(&w2, false).ok());
  ASSERT_TRUE(WriteAt(*m, w2, 72, frames.substr(72, 24)).ok());
  ASSERT_TRUE(WriteAt(*m, w2, 96, frames.substr(96)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(6));
  m->EndWrite(&w2);
  // The same after the daemon restarted (the layout is known from the spool file only).
  auto resumed = f.Resume("rec.npy", m->spool_path());
  ASSERT_NE(resumed, nullptr);
  WriterSession w3;
  ASSERT_TRUE(resumed->BeginWrite(&w3, false).ok());
  ASSERT_TRUE(WriteAt(*resumed, w3, 144, U16Frames(6, 2, 12)).ok());
  EXPECT_EQ(ReadVisible(*resumed), NumpyU16(8));
}

TEST(GrowingMember, ALaterWriterOfAHeaderFirstMemberNeverWritesInRawCoordinates) {
  Fixture f;
  auto m = f.Create("saved.npy");
  const std::string ref = NumpyU16(4);
  const uint64_t h = HeaderLength(ref);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, ref.substr(0, h + 48)).ok());  // np.save's header, 2 frames
  m->EndWrite(&w);
  WriterSession w2;
  ASSERT_TRUE(m->BeginWrite(&w2, false).ok());
  // Offset 48 lies in the data the writer sees: an overwrite, not a raw append.
  EXPECT_EQ(WriteAt(*m, w2, 48, ref.substr(h + 48)).code(), EPERM);
  ASSERT_TRUE(WriteAt(*m, w2, h + 48, ref.substr(h + 48)).ok());
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, AWriterWithAnotherHeaderLengthMayContinueAtTheVisibleEnd) {
  Fixture f;
  auto m = f.Create("old2.npy");
  const std::string ref = NumpyU16(5);
  const uint64_t h = HeaderLength(ref);
  const std::string data = ref.substr(h);
  // A v1.0 header padded to 16 bytes (numpy < 1.9, or a C writer): not the canonical length.
  std::string dict = "{'descr': '<u2', 'fortran_order': False, 'shape': (0, 3, 4), }";
  dict += std::string((16 - (10 + dict.size() + 1) % 16) % 16, ' ') + "\n";
  std::string header = std::string("\x93NUMPY\x01\x00", 8);
  header += static_cast<char>(dict.size() & 0xff);
  header += static_cast<char>(dict.size() >> 8);
  header += dict;
  ASSERT_NE(header.size(), h);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, header + data.substr(0, 48)).ok());
  // The writer rewrites its header, then seeks to the end: the size it sees counts the
  // canonical header.
  ASSERT_TRUE(WriteAt(*m, w, 0, header).ok());
  ASSERT_EQ(m->visible_size(), h + 48);
  ASSERT_TRUE(WriteAt(*m, w, h + 48, data.substr(48, 24)).ok());
  ASSERT_TRUE(WriteAt(*m, w, h + 72, data.substr(72)).ok());
  EXPECT_EQ(ReadVisible(*m), ref);
}

TEST(GrowingMember, AWriteAtTheSizeShownWhileAPartialFrameIsHeldBackSaysWhereToContinue) {
  Fixture f;
  auto m = f.Create("part.npy", U16Layout());
  const uint64_t h = m->visible_size();
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12).substr(0, 36)).ok());  // 1.5 frames
  m->EndWrite(&w);
  WriterSession w2;
  ASSERT_TRUE(m->BeginWrite(&w2, false).ok());
  ASSERT_EQ(m->visible_size(), h + 24);
  Status s = WriteAt(*m, w2, h + 24, U16Frames(1, 1, 12));
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("incomplete frame"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("continue at offset " + std::to_string(h + 36)), std::string::npos)
      << s.message();
  EXPECT_EQ(ReadVisible(*m), NumpyU16(1)) << "nothing was written";
}

TEST(GrowingMember, AWriterReopeningWhileItsLastSessionIsStillEndingWaitsForIt) {
  using std::chrono::milliseconds;
  Fixture f;
  auto m = f.Create("r.bin");
  WriterSession last;
  ASSERT_TRUE(m->BeginWrite(&last, true).ok());
  // No wait: the session is still active.
  WriterSession next;
  EXPECT_EQ(m->BeginWrite(&next, true).code(), EBUSY);
  // The release of the last handle arrives while the next open waits for it.
  std::thread release([&] {
    std::this_thread::sleep_for(milliseconds(50));
    m->EndWrite(&last);
  });
  EXPECT_TRUE(m->BeginWrite(&next, true, milliseconds(10000)).ok());
  release.join();
  // A writer that keeps its session: EBUSY once the wait is over.
  WriterSession third;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(m->BeginWrite(&third, true, milliseconds(100)).code(), EBUSY);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(100));
  m->EndWrite(&next);
}

TEST(GrowingMember, TruncateToZeroIsAcceptedWhileNoDataWasWritten) {
  Fixture f;
  auto m = f.Create("t.npy");
  EXPECT_TRUE(m->Truncate(0).ok()) << "O_TRUNC on a new, empty file";
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string ref = NumpyU16(2);
  const size_t h = HeaderLength(ref);
  ASSERT_TRUE(WriteAt(*m, w, 0, ref.substr(0, h)).ok());  // header only
  EXPECT_TRUE(m->CheckRemovable().ok());
  EXPECT_TRUE(m->Truncate(0).ok());
  EXPECT_FALSE(m->layout().has_value()) << "a header-first layout is forgotten";
  EXPECT_EQ(m->visible_size(), 0u);
  // The writer starts over with another layout.
  const std::string other = NumpyU16(2, "4, 3");
  ASSERT_TRUE(WriteAt(*m, w, 0, other).ok());
  EXPECT_EQ(ReadVisible(*m), other);
  EXPECT_EQ(m->Truncate(0).code(), EPERM);
}

TEST(GrowingMember, ResumeKeepsEveryCompleteFrameAndDropsAPartialTail) {
  Fixture f;
  auto m = f.Create("crash.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string frames = U16Frames(0, 10, 12);
  ASSERT_TRUE(WriteAt(*m, w, 0, frames.substr(0, 5 * 24 + 7)).ok());
  // A crash "now": copy the spool file as the kernel holds it, then add garbage as if a
  // later write had been cut short.
  const std::string copy = f.dir.Join("copy");
  std::filesystem::copy_file(m->spool_path(), copy);
  {
    std::string bytes = ReadFileOrDie(copy) + std::string(11, '\x7f');
    WriteFileOrDie(copy, bytes);
  }
  f.log.clear();
  auto r = f.Resume("crash.npy", copy);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->frame_count(), 5u);
  EXPECT_EQ(ReadVisible(*r), NumpyU16(5));
  EXPECT_EQ(ReadFileOrDie(copy), NumpyU16(5)) << "partial tail cut, header recounted";
  ASSERT_EQ(f.log.size(), 1u);
  EXPECT_NE(f.log[0].find("18 bytes of a partial frame"), std::string::npos) << f.log[0];
  // Appending carries on in visible coordinates.
  WriterSession w2;
  ASSERT_TRUE(r->BeginWrite(&w2, false).ok());
  const size_t h = HeaderLength(NumpyU16(0));
  ASSERT_TRUE(WriteAt(*r, w2, h + 5 * 24, frames.substr(5 * 24)).ok());
  EXPECT_EQ(ReadVisible(*r), NumpyU16(10));
  auto fin = r->PrepareFinalize();
  ASSERT_TRUE(fin.ok());
  EXPECT_FALSE(fin->crc32.has_value()) << "the CRC of resumed data is not known";
}

TEST(GrowingMember, ResumeOfAHeaderOnlyFileStartsEmptyAndTakesRawFrames) {
  Fixture f;
  const std::string path = f.dir.Join("h.npy");
  WriteFileOrDie(path, NumpyU16(0));
  auto r = f.Resume("h.npy", path);
  ASSERT_TRUE(r);
  EXPECT_EQ(ReadVisible(*r), NumpyU16(0));
  WriterSession w;
  ASSERT_TRUE(r->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*r, w, 0, U16Frames(0, 3, 12)).ok());
  EXPECT_EQ(ReadVisible(*r), NumpyU16(3));
}

TEST(GrowingMember, ResumeOfAHeaderCutShortRestartsEmpty) {
  Fixture f;
  const std::string path = f.dir.Join("cut.npy");
  WriteFileOrDie(path, NumpyU16(0).substr(0, 40));
  auto r = f.Resume("cut.npy", path);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->visible_size(), 0u);
  EXPECT_FALSE(r->layout().has_value());
  EXPECT_EQ(ReadFileOrDie(path), "");
}

// A shorter declared header replaces a longer one. The spool file must never hold the new
// header followed by the old one's tail: Resume would count that tail as data. A failure of
// the second step stands in for a crash between the two: a memfd sealed against shrinking
// refuses the ftruncate.
TEST(GrowingMember, AShorterDeclaredHeaderNeverLeavesTheOldHeadersTailAsData) {
  Fixture f;
  const std::string long_header =
      NpyHeader::ForFrames("<u1", std::vector<uint64_t>(40, 1), false, 0)->Format();
  const int fd = ::memfd_create("spool.npy", MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ASSERT_EQ(::pwrite(fd, long_header.data(), long_header.size(), 0),
            static_cast<ssize_t>(long_header.size()));
  ASSERT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0) << std::strerror(errno);
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto m = f.Resume("s.npy", path);
  ASSERT_TRUE(m);
  EXPECT_FALSE(m->SetAttribute(kShapeAttribute, "1").ok());
  auto again = f.Resume("s.npy", path);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->frame_count(), 0u) << "the old header's tail was counted as frames";
  EXPECT_EQ(again->data_bytes(), 0u);
}

// A crash in the pwrite of a header into the emptied spool file leaves any prefix of it:
// Resume restarts the member empty, whatever the length of the prefix.
TEST(GrowingMember, ResumeOfAnyPrefixOfAHeaderRestartsEmpty) {
  Fixture f;
  const std::string header = U16Layout().Format();
  for (size_t n = 0; n < header.size(); ++n) {
    const std::string path = f.dir.Join("p" + std::to_string(n) + ".npy");
    WriteFileOrDie(path, header.substr(0, n));
    auto r = f.Resume("p.npy", path);
    ASSERT_TRUE(r) << n << " bytes";
    EXPECT_FALSE(r->layout().has_value()) << n << " bytes";
    EXPECT_EQ(r->visible_size(), 0u) << n << " bytes";
    EXPECT_EQ(ReadFileOrDie(path), "") << n << " bytes";
  }
}

TEST(GrowingMember, ResumeRejectsAFileThatIsNotANpy) {
  Fixture f;
  const std::string path = f.dir.Join("junk.npy");
  WriteFileOrDie(path, "this is not numpy at all");
  auto r = GrowingMember::Resume("junk.npy", path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EINVAL);
  EXPECT_NE(r.status().message().find(path), std::string::npos);
}

TEST(GrowingMember, ResumeOfAVerbatimFileKeepsEveryByte) {
  Fixture f;
  const std::string path = f.dir.Join("v");
  WriteFileOrDie(path, "abc");
  auto r = f.Resume("notes.txt", path);
  ASSERT_TRUE(r);
  EXPECT_EQ(ReadVisible(*r), "abc");
  WriterSession w;
  ASSERT_TRUE(r->BeginWrite(&w, false).ok());
  EXPECT_EQ(WriteAt(*r, w, 0, "x").code(), EPERM);
  ASSERT_TRUE(WriteAt(*r, w, 3, "def").ok());
  EXPECT_EQ(ReadVisible(*r), "abcdef");
}

TEST(GrowingMember, TheRunningCrcMatchesTheFinalizedBytes) {
  Fixture f;
  auto m = f.Create("crc.npy");
  const std::string ref = NumpyU16(20);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  std::mt19937 rng(7);
  size_t off = 0;
  while (off < ref.size()) {
    size_t n = std::min<size_t>(ref.size() - off, 1 + rng() % 61);
    ASSERT_TRUE(WriteAt(*m, w, off, ref.substr(off, n)).ok());
    off += n;
  }
  ASSERT_TRUE(WriteAt(*m, w, off, "\x05\x06\x07").ok());  // dropped partial frame
  ASSERT_TRUE(m->Fsync().ok());
  f.log.clear();
  auto fin = m->PrepareFinalize();
  ASSERT_TRUE(fin.ok());
  EXPECT_EQ(fin->header, ref.substr(0, HeaderLength(ref)));
  EXPECT_EQ(fin->data_offset, HeaderLength(ref));
  EXPECT_EQ(fin->data_length, ref.size() - HeaderLength(ref));
  EXPECT_EQ(fin->dropped_partial_bytes, 3u);
  ASSERT_TRUE(fin->crc32.has_value());
  EXPECT_EQ(*fin->crc32,
            ::crc32(0, reinterpret_cast<const Bytef*>(ref.data()), static_cast<uInt>(ref.size())));
  EXPECT_EQ(f.log.size(), 1u) << "the dropped partial frame is logged";
}

TEST(GrowingMember, AConcurrentReaderNeverSeesACountItsSizeCannotHold) {
  Fixture f;
  auto m = f.Create("live.npy", U16Layout());
  const size_t h = HeaderLength(NumpyU16(0));
  const uint64_t kFrames = 2000;
  const std::string frames = U16Frames(0, kFrames, 12);
  std::atomic<bool> done{false};
  std::atomic<int> checks{0};
  std::string failure;
  uint64_t last = 0;
  // One look at the member as a reader: false (and `failure` set) on an inconsistency.
  auto check = [&]() -> bool {
    // As the daemon does: a snapshot at open, the size from a stat, then reads.
    ReaderSnapshot snap = m->TakeSnapshot();
    uint64_t size = m->visible_size();
    std::string buf(size, '\0');
    auto n = m->ReadAt(snap, 0, std::span(reinterpret_cast<std::byte*>(buf.data()), buf.size()));
    if (!n.ok() || *n != size) {
      failure = "short read";
      return false;
    }
    auto hdr = NpyHeader::Parse(buf);
    if (!hdr.ok() || hdr->frame_count() * 24 + h != snap.size ||
        buf.size() < h + hdr->frame_count() * 24) {
      failure = "header count does not match the visible size";
      return false;
    }
    if (hdr->frame_count() < last) {
      failure = "frame count went backwards";
      return false;
    }
    last = hdr->frame_count();
    if (buf.compare(h, last * 24, frames, 0, last * 24) != 0) {
      failure = "frame contents differ";
      return false;
    }
    checks++;
    return true;
  };
  std::thread reader([&] {
    while (!done.load()) {
      if (!check()) return;
    }
    check();
  });
  WriterSession w;
  Status st = m->BeginWrite(&w, false);
  std::mt19937 rng(3);
  size_t off = 0;
  while (st.ok() && off < frames.size()) {
    size_t n = std::min<size_t>(frames.size() - off, 1 + rng() % 100);
    st = WriteAt(*m, w, off, frames.substr(off, n));
    off += n;
  }
  done = true;
  reader.join();
  EXPECT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(last, kFrames);
  EXPECT_EQ(failure, "");
  EXPECT_GT(checks.load(), 0);
  EXPECT_EQ(m->frame_count(), kFrames);
}

TEST(GrowingMember, ASnapshotKeepsItsCountWhileTheMemberGrows) {
  Fixture f;
  auto m = f.Create("snap.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  ReaderSnapshot snap = m->TakeSnapshot();
  EXPECT_EQ(snap.size, NumpyU16(2).size());
  ASSERT_TRUE(WriteAt(*m, w, 48, U16Frames(2, 3, 12)).ok());
  // Through the old snapshot: the old count, and the newer frames as trailing bytes.
  std::string buf(m->visible_size(), '\0');
  auto n = m->ReadAt(snap, 0, std::span(reinterpret_cast<std::byte*>(buf.data()), buf.size()));
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, NumpyU16(5).size());
  EXPECT_EQ(buf.substr(0, HeaderLength(buf)), NumpyU16(2).substr(0, HeaderLength(buf)));
  EXPECT_EQ(buf.substr(HeaderLength(buf)), U16Frames(0, 5, 12));
  // A new snapshot sees every frame.
  EXPECT_EQ(ReadVisible(*m), NumpyU16(5));
}

TEST(GrowingMember, AHeaderOnlyMemberMayBeRemovedButNotOneWithData) {
  Fixture f;
  auto m = f.Create("r.npy", U16Layout());
  EXPECT_TRUE(m->CheckRemovable().ok());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, "\x01").ok());
  Status s = m->CheckRemovable();
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("r.npy"), std::string::npos);
  m->MarkRemoved();
  EXPECT_EQ(WriteAt(*m, w, 1, "\x02").code(), ENOENT);
}

TEST(GrowingMember, CreatingOverAnExistingSpoolFileIsEexist) {
  Fixture f;
  WriteFileOrDie(f.dir.Join("dup.npy"), "");
  auto m = GrowingMember::Create("dup.npy", f.dir.Join("dup.npy"), std::nullopt);
  EXPECT_EQ(m.status().code(), EEXIST);
}

TEST(GrowingMember, ASpoolThatRunsOutOfSpaceFailsTheWriteAndKeepsEarlierFrames) {
  TempDir t;
  const std::string dir = t.Join("small");
  SmallTmpfs tmpfs(dir, "256k");
  if (!tmpfs.mounted()) NPZ_SKIP_UNLESS_CI("cannot mount a tmpfs here (needs root)");
  const size_t h = HeaderLength(NumpyU16(0));
  {
    auto m = GrowingMember::Create("full.npy", dir + "/full.npy", U16Layout());
    ASSERT_TRUE(m.ok());
    WriterSession w;
    ASSERT_TRUE((*m)->BeginWrite(&w, false).ok());
    ASSERT_TRUE(WriteAt(**m, w, 0, U16Frames(0, 1000, 12)).ok());
    Status s = WriteAt(**m, w, 24000, U16Frames(1000, 20000, 12));
    EXPECT_EQ(s.code(), ENOSPC) << s.message();
    EXPECT_NE(s.message().find("full.npy"), std::string::npos);
    EXPECT_EQ((*m)->frame_count(), 1000u);
    EXPECT_EQ(std::filesystem::file_size(dir + "/full.npy"), h + 24000)
        << "what the failed write added is cut again";
    ASSERT_TRUE(WriteAt(**m, w, 24000, U16Frames(1000, 1, 12)).ok());
    EXPECT_EQ(ReadVisible(**m), NumpyU16(1001));
  }
  std::filesystem::remove(dir + "/full.npy");
  // A header with too much data behind it: the header is taken, the write is short.
  auto m = GrowingMember::Create("short.npy", dir + "/short.npy", std::nullopt);
  ASSERT_TRUE(m.ok());
  WriterSession w;
  ASSERT_TRUE((*m)->BeginWrite(&w, false).ok());
  const std::string big = NumpyU16(0) + U16Frames(0, 20000, 12);
  auto r =
      (*m)->Write(&w, 0, std::span(reinterpret_cast<const std::byte*>(big.data()), big.size()));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, h);
  ASSERT_TRUE(WriteAt(**m, w, h, U16Frames(0, 2, 12)).ok());
  EXPECT_EQ(ReadVisible(**m), NumpyU16(2));
}

TEST(GrowingMember, AWriteThatFailsAfterItWasAcknowledgedFailsTheSessionsNextWriteFsyncAndClose) {
  TempDir t;
  const std::string dir = t.Join("small");
  SmallTmpfs tmpfs(dir, "256k");
  if (!tmpfs.mounted()) NPZ_SKIP_UNLESS_CI("cannot mount a tmpfs here (needs root)");
  std::vector<std::string> log;
  auto m = GrowingMember::Create("full.npy", dir + "/full.npy", U16Layout(),
                                 [&](const auto& l) { log.push_back(l); });
  ASSERT_TRUE(m.ok());
  WriterSession w;
  ASSERT_TRUE((*m)->BeginWrite(&w, false).ok());
  std::vector<size_t> acknowledged;
  auto accepted = [&](size_t n) { acknowledged.push_back(n); };
  auto write = [&](uint64_t off, const std::string& bytes) {
    return (*m)->Write(&w, off, Bytes(bytes), accepted);
  };
  ASSERT_TRUE(write(0, U16Frames(0, 1000, 12)).ok());
  // 480 KB: acknowledged before the pwrite that the full tmpfs then refuses.
  auto failed = write(24000, U16Frames(1000, 20000, 12));
  ASSERT_EQ(failed.status().code(), ENOSPC) << failed.status().message();
  EXPECT_EQ(acknowledged, (std::vector<size_t>{24000, 480000}));
  EXPECT_NE(failed.status().message().find("was acknowledged, then failed"), std::string::npos)
      << failed.status().message();
  EXPECT_EQ((*m)->frame_count(), 1000u);
  EXPECT_EQ(std::filesystem::file_size(dir + "/full.npy"), HeaderLength(NumpyU16(0)) + 24000)
      << "what the failed write added is cut again";
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.back().find("was acknowledged, then failed"), std::string::npos) << log.back();

  // The writer believes those bytes written: each of its later calls fails, even one that
  // would fit, and even at the member's real end.
  EXPECT_EQ(write(24000, U16Frames(1000, 1, 12)).status().code(), ENOSPC);
  EXPECT_EQ(write(504000, U16Frames(21000, 1, 12)).status().code(), ENOSPC);
  EXPECT_EQ((*m)->WriterStatus(&w).code(), ENOSPC);
  EXPECT_EQ((*m)->Fsync(&w).code(), ENOSPC);
  EXPECT_TRUE((*m)->Fsync().ok()) << "the spool file itself is fine";
  EXPECT_EQ((*m)->frame_count(), 1000u);
  (*m)->EndWrite(&w);

  // A new writer goes on from what the member holds.
  WriterSession next;
  ASSERT_TRUE((*m)->BeginWrite(&next, true).ok());
  EXPECT_TRUE((*m)->WriterStatus(&next).ok());
  auto r = (*m)->Write(&next, 0, Bytes(U16Frames(1000, 1, 12)), accepted);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(ReadVisible(**m), NumpyU16(1001));
}

TEST(GrowingMember, AReaderWaitsForAWriteThatWasAcknowledgedBeforeItsBytesWereWritten) {
  Fixture f;
  auto m = f.Create("adc.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  const uint64_t h = HeaderLength(NumpyU16(0));
  std::future<uint64_t> size, frames;
  std::future<ReaderSnapshot> snapshot;
  bool reader_waited = false;
  auto accepted = [&](size_t n) {
    EXPECT_EQ(n, 72u);
    // What a reader would ask right after the writer's write() returned.
    size = std::async(std::launch::async, [&] { return m->visible_size(); });
    frames = std::async(std::launch::async, [&] { return m->frame_count(); });
    snapshot = std::async(std::launch::async, [&] { return m->TakeSnapshot(); });
    reader_waited = size.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout;
  };
  auto r = m->Write(&w, 48, Bytes(U16Frames(2, 3, 12)), accepted);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(reader_waited) << "a reader answered before the acknowledged bytes were written";
  EXPECT_EQ(size.get(), h + 5 * 24);
  EXPECT_EQ(frames.get(), 5u);
  EXPECT_EQ(snapshot.get().size, h + 5 * 24);
  EXPECT_EQ(ReadVisible(*m), NumpyU16(5));
}

TEST(GrowingMember, AnUnlinkAfterTheFirstReturnedWriteIsRefusedForTheDataItWillHold) {
  Fixture f;
  auto m = f.Create("adc.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  std::future<Status> removable;
  auto accepted = [&](size_t) {
    // The writer's write() has returned; its program now unlinks the file.
    removable = std::async(std::launch::async, [&] { return m->CheckRemovable(); });
    removable.wait_for(std::chrono::milliseconds(200));
  };
  ASSERT_TRUE(m->Write(&w, 0, Bytes(U16Frames(0, 2, 12)), accepted).ok());
  EXPECT_EQ(removable.get().code(), EPERM);
}

// Bytes the file's blocks hold (st_blocks counts 512-byte units).
uint64_t AllocatedBytes(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

TEST(GrowingMember, TheSpoolIsAllocatedAheadOfTheWriterAndGivenBackWhenItCloses) {
  Fixture f;
  {
    UniqueFd probe(::open(f.dir.Join("probe").c_str(), O_RDWR | O_CREAT, 0644));
    if (::fallocate(probe.get(), FALLOC_FL_KEEP_SIZE, 0, 4096) != 0) {
      GTEST_SKIP() << "the test directory's filesystem has no fallocate";
    }
  }
  auto m = f.Create("ahead.npy", U16Layout());
  const std::string path = f.dir.Join("ahead.npy");
  const uint64_t frame = 3 * 4 * 2;
  const size_t h = HeaderLength(NumpyU16(0));
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const uint64_t frames = (4 << 20) / frame;  // about 4 MiB
  uint64_t written = 0;
  while (written < frames) {
    const uint64_t n = std::min<uint64_t>(frames - written, 5000);
    ASSERT_TRUE(WriteAt(*m, w, written * frame, U16Frames(written, n, 12)).ok());
    written += n;
  }
  const uint64_t size = h + frames * frame;
  EXPECT_EQ(std::filesystem::file_size(path), size) << "the blocks ahead are beyond the size";
  EXPECT_GE(AllocatedBytes(path), size + (2 << 20)) << "blocks are allocated ahead";
  EXPECT_EQ(m->visible_size(), size);
  m->EndWrite(&w);
  EXPECT_LT(AllocatedBytes(path), size + (64 << 10)) << "the closed writer gave them back";
  EXPECT_EQ(std::filesystem::file_size(path), size);
  EXPECT_EQ(ReadVisible(*m), NumpyU16(frames));
  // A crashed daemon leaves them allocated: Resume sees only the bytes written.
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());  // a later writer: visible coordinates
  ASSERT_TRUE(WriteAt(*m, w, size, U16Frames(frames, 1000, 12)).ok());
  m.reset();  // no EndWrite
  auto resumed = f.Resume("ahead.npy", path);
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->frame_count(), frames + 1000);
  EXPECT_EQ(ReadVisible(*resumed), NumpyU16(frames + 1000));
}

// ---- the reader handle (OpenReader) ----

std::string ReadThrough(MemberReader& r) {
  std::string out(r.size(), '\0');
  auto n = r.ReadAt(0, std::span(reinterpret_cast<std::byte*>(out.data()), out.size()));
  EXPECT_TRUE(n.ok()) << n.status().message();
  if (n.ok()) out.resize(*n);
  return out;
}

TEST(GrowingMember, AReaderHandleKeepsTheHeaderItOpenedWithWhileTheSizeFollowsTheGrowth) {
  Fixture f;
  auto m = f.Create("snap.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  std::shared_ptr<MemberReader> reader = m->OpenReader(GrowingView::kSnapshot);
  EXPECT_EQ(reader->size(), NumpyU16(2).size());
  ASSERT_TRUE(WriteAt(*m, w, 48, U16Frames(2, 3, 12)).ok());
  EXPECT_EQ(reader->size(), NumpyU16(5).size()) << "stat follows the growth";
  const std::string seen = ReadThrough(*reader);
  const size_t h = HeaderLength(seen);
  EXPECT_EQ(seen.substr(0, h), NumpyU16(2).substr(0, h)) << "the header counts 2 frames";
  EXPECT_EQ(seen.substr(h), U16Frames(0, 5, 12)) << "later frames are trailing bytes";
  // A handle opened now sees all five frames.
  EXPECT_EQ(ReadThrough(*m->OpenReader(GrowingView::kSnapshot)), NumpyU16(5));
}

TEST(GrowingMember, ALiveReaderShowsTheMemberAsItIsAtEachRead) {
  Fixture f;
  auto m = f.Create("live.npy", U16Layout());
  std::shared_ptr<MemberReader> live = m->OpenReader(GrowingView::kLive);
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 1, 12)).ok());
  EXPECT_EQ(ReadThrough(*live), NumpyU16(1));
  ASSERT_TRUE(WriteAt(*m, w, 24, U16Frames(1, 3, 12)).ok());
  EXPECT_EQ(ReadThrough(*live), NumpyU16(4));
}

TEST(GrowingMember, DataReadsAreSplicedFromTheSpoolFileAndHeaderReadsAreCopied) {
  Fixture f;
  auto m = f.Create("splice.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 4, 12)).ok());
  std::shared_ptr<MemberReader> reader = m->OpenReader(GrowingView::kSnapshot);
  const std::string expected = NumpyU16(4);
  const size_t h = HeaderLength(expected);
  std::vector<std::byte> buf(1000);

  // Inside the data region: "take these bytes from this fd at this offset".
  auto data = reader->Read(h + 10, buf);
  ASSERT_TRUE(data.ok()) << data.status().message();
  ASSERT_GE(data->splice_fd, 0);
  EXPECT_EQ(data->length, expected.size() - h - 10) << "short only at the visible end";
  std::string spliced(data->length, '\0');
  ASSERT_TRUE(
      PreadExact(data->splice_fd, spliced.data(), spliced.size(), data->splice_offset, "splice")
          .ok());
  EXPECT_EQ(spliced, expected.substr(h + 10));

  // Touching the header (kept in memory, rewritten on disk as frames arrive): copied.
  auto head = reader->Read(h - 4, std::span(buf).first(20));
  ASSERT_TRUE(head.ok()) << head.status().message();
  EXPECT_LT(head->splice_fd, 0);
  ASSERT_EQ(head->length, 20u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), 20), expected.substr(h - 4, 20));

  // At or past the end: nothing.
  auto end = reader->Read(expected.size(), buf);
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->length, 0u);
}

TEST(GrowingMember, APartialFrameIsNeverSpliced) {
  Fixture f;
  auto m = f.Create("partial.npy", U16Layout());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12).substr(0, 24 + 7)).ok());
  std::shared_ptr<MemberReader> reader = m->OpenReader(GrowingView::kSnapshot);
  const size_t h = HeaderLength(NumpyU16(1));
  std::vector<std::byte> buf(100);
  auto answer = reader->Read(h, buf);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->length, 24u) << "the 7 bytes of the second frame are held back";
}

// ---- renames keep the object ----

TEST(GrowingMember, ARenamedMemberKeepsItsLayoutItsAttributesAndItsWriter) {
  Fixture f;
  auto m = f.Create("before.npy");
  ASSERT_TRUE(m->SetAttribute(kDescrAttribute, "<u2").ok());
  ASSERT_TRUE(m->SetAttribute(kShapeAttribute, "3,4").ok());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string old_path = m->spool_path();
  ASSERT_TRUE(m->MoveTo("sub/after.npy", f.dir.Join("after.npy")).ok());
  EXPECT_EQ(m->name(), "sub/after.npy");
  EXPECT_EQ(m->spool_path(), f.dir.Join("after.npy"));
  EXPECT_FALSE(std::filesystem::exists(old_path));
  EXPECT_EQ(*m->GetAttribute(kShapeAttribute), "3,4");
  // The writer that began before the rename goes on, raw frames in the declared layout.
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 3, 12)).ok());
  EXPECT_EQ(ReadVisible(*m), NumpyU16(3));
  EXPECT_EQ(ReadFileOrDie(f.dir.Join("after.npy")), NumpyU16(3));
  // Once it holds data it can no longer move.
  EXPECT_EQ(m->MoveTo("again.npy", f.dir.Join("again.npy")).code(), EPERM);
  EXPECT_EQ(m->name(), "sub/after.npy");
}

TEST(GrowingMember, ARenameToAnotherKindStartsTheMemberEmpty) {
  Fixture f;
  auto m = f.Create("h.npy", U16Layout());
  ASSERT_TRUE(m->MoveTo("h.txt", f.dir.Join("h.txt")).ok());
  EXPECT_FALSE(m->is_npy());
  EXPECT_EQ(m->visible_size(), 0u);
  EXPECT_EQ(ReadFileOrDie(f.dir.Join("h.txt")), "");
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, "plain text").ok());
  EXPECT_EQ(ReadVisible(*m), "plain text");
  // A failed rename(2) leaves the member as it was.
  auto n = f.Create("n.npy", U16Layout());
  EXPECT_EQ(n->MoveTo("x.txt", f.dir.Join("missing-dir/x.txt")).code(), ENOENT);
  EXPECT_EQ(n->name(), "n.npy");
  EXPECT_EQ(ReadFileOrDie(n->spool_path()), NumpyU16(0)) << "the declared header is put back";
}

TEST(GrowingMember, AReaderOpenedBeforeARenameToAnotherKindNeverShowsTheOldHeader) {
  Fixture f;
  auto m = f.Create("a.npy", U16Layout());
  // Its snapshot holds the .npy header; after the rename the member is a plain file.
  auto reader = m->OpenReader(GrowingView::kSnapshot);
  ASSERT_TRUE(m->MoveTo("a.bin", f.dir.Join("a.bin")).ok());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string data(300, 'Z');
  ASSERT_TRUE(WriteAt(*m, w, 0, data).ok());
  std::string out(data.size(), '\0');
  auto got = reader->ReadAt(0, std::span(reinterpret_cast<std::byte*>(out.data()), out.size()));
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, data.size());
  EXPECT_EQ(out, data);
  auto answer = reader->Read(0, std::span(reinterpret_cast<std::byte*>(out.data()), out.size()));
  ASSERT_TRUE(answer.ok()) << answer.status().message();
  EXPECT_GE(answer->splice_fd, 0) << "every byte of a plain file is data";
}

// ---- a reader opened before the layout changed ----

// The canonical header of `n` '<i2' frames of shape (3, 4): another dtype than U16Layout()
// whose header has the same length, so that only its bytes tell the two apart.
std::string I16Header(uint64_t n) {
  return NpyHeader::ForFrames("<i2", {3, 4}, false, n)->Format();
}

TEST(GrowingMember, AReaderOpenedBeforeATruncateNeverSeesTheOldDtypeOverNewData) {
  Fixture f;
  auto m = f.Create("t.npy");
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string old_header = NumpyU16(0);  // a '<u2' header, no data yet
  ASSERT_TRUE(WriteAt(*m, w, 0, old_header).ok());
  auto reader = m->OpenReader(GrowingView::kSnapshot);  // its snapshot holds the '<u2' header
  ASSERT_TRUE(m->Truncate(0).ok());                     // O_TRUNC: the writer starts over
  const std::string frames = U16Frames(0, 2, 12);
  ASSERT_TRUE(WriteAt(*m, w, 0, I16Header(0) + frames).ok());  // with '<i2' frames
  ASSERT_EQ(I16Header(2).size(), old_header.size());
  EXPECT_EQ(ReadThrough(*reader), I16Header(2) + frames) << "the reader follows the new layout";
}

TEST(GrowingMember, AReaderOpenedBeforeARenameCycleFollowsTheLayoutItsNewAttributesDeclare) {
  Fixture f;
  auto m = f.Create("c.npy", U16Layout());
  auto reader = m->OpenReader(GrowingView::kSnapshot);
  ASSERT_TRUE(m->MoveTo("c.tmp", f.dir.Join("c.tmp")).ok());  // a plain file: starts empty
  ASSERT_TRUE(m->MoveTo("c.npy", f.dir.Join("c.npy")).ok());
  ASSERT_TRUE(m->SetAttribute(kShapeAttribute, "3,4").ok());
  ASSERT_TRUE(m->SetAttribute(kDescrAttribute, "<i2").ok());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string frames = U16Frames(0, 3, 12);
  ASSERT_TRUE(WriteAt(*m, w, 0, frames).ok());
  ASSERT_EQ(I16Header(3).size(), U16Layout().Format().size());
  EXPECT_EQ(ReadThrough(*reader), I16Header(3) + frames);
}

TEST(GrowingMember, AReaderOpenedBeforeNewLayoutAttributesFollowsTheNewLayout) {
  Fixture f;
  auto m = f.Create("a.npy", U16Layout());
  auto reader = m->OpenReader(GrowingView::kSnapshot);
  ASSERT_TRUE(m->SetAttribute(kDescrAttribute, "<i2").ok());  // no data yet: the layout changes
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  const std::string frames = U16Frames(0, 2, 12);
  ASSERT_TRUE(WriteAt(*m, w, 0, frames).ok());
  EXPECT_EQ(ReadThrough(*reader), I16Header(2) + frames);
  // A handle opened in the new layout keeps its own count, as before.
  auto later = m->OpenReader(GrowingView::kSnapshot);
  ASSERT_TRUE(WriteAt(*m, w, frames.size(), U16Frames(2, 1, 12)).ok());
  EXPECT_EQ(ReadThrough(*later), I16Header(2) + U16Frames(0, 3, 12));
}

// ---- a failed rewrite of the header's count ----

// A HeaderWriteFn that fails with `error` while it is not 0, and writes otherwise.
struct FlakyHeaderWrites {
  int error = 0;
  HeaderWriteFn Fn() {
    return [this](int fd, const std::string& header, const std::string& path) {
      if (error != 0) return Status::Error(error, path + ": write failed: injected");
      return PwriteAll(fd, header.data(), header.size(), 0, path);
    };
  }
};

// The frame count in the header of the spool file.
uint64_t CountOnDisk(const std::string& path) {
  auto h = NpyHeader::Parse(ReadFileOrDie(path));
  EXPECT_TRUE(h.ok()) << path << ": " << h.status().message();
  return h.ok() ? h->frame_count() : ~uint64_t{0};
}

TEST(GrowingMember, AFailedCountRewriteAfterTheFramesWerePublishedDoesNotFailTheWrite) {
  Fixture f;
  FlakyHeaderWrites disk;
  auto m = f.Create("eio.npy", U16Layout(), disk.Fn());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  disk.error = EIO;
  Status st = WriteAt(*m, w, 48, U16Frames(2, 3, 12));
  EXPECT_TRUE(st.ok()) << "the frames were published, the write succeeded: " << st.message();
  EXPECT_EQ(m->frame_count(), 5u);
  EXPECT_EQ(ReadThrough(*m->OpenReader(GrowingView::kSnapshot)), NumpyU16(5));
  EXPECT_EQ(CountOnDisk(m->spool_path()), 2u) << "behind, but never ahead of the data";
  ASSERT_EQ(f.log.size(), 1u);
  EXPECT_NE(f.log[0].find("eio.npy"), std::string::npos) << f.log[0];
  EXPECT_NE(f.log[0].find("injected"), std::string::npos) << f.log[0];
  // Finalize takes the header from memory, not from the spool file.
  auto fin = m->PrepareFinalize();
  ASSERT_TRUE(fin.ok()) << fin.status().message();
  EXPECT_EQ(fin->header + ReadFileOrDie(m->spool_path()).substr(fin->data_offset, fin->data_length),
            NumpyU16(5));
  // Later writes succeed while it keeps failing (logged once), and the first that can
  // rewrite the header does, even one that completes no frame.
  ASSERT_TRUE(WriteAt(*m, w, 5 * 24, U16Frames(5, 1, 12)).ok());
  EXPECT_EQ(f.log.size(), 1u) << "not one line per write";
  disk.error = 0;
  const std::string partial = U16Frames(6, 1, 12).substr(0, 5);
  ASSERT_TRUE(WriteAt(*m, w, 6 * 24, partial).ok());
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), NumpyU16(6) + partial);
  EXPECT_EQ(f.log.size(), 2u) << "the recovery is logged";
}

TEST(GrowingMember, FsyncRetriesAFailedCountRewriteAndReportsItWhileItFails) {
  Fixture f;
  FlakyHeaderWrites disk;
  auto m = f.Create("sync.npy", U16Layout(), disk.Fn());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  disk.error = ENOSPC;  // a copy-on-write filesystem may need a new block for it
  ASSERT_TRUE(WriteAt(*m, w, 48, U16Frames(2, 3, 12)).ok());
  Status s = m->Fsync();
  EXPECT_EQ(s.code(), ENOSPC) << s.message();
  EXPECT_NE(s.message().find("sync.npy"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("injected"), std::string::npos) << s.message();
  EXPECT_EQ(m->Fsync().code(), ENOSPC) << "as long as the header cannot be written";
  EXPECT_EQ(CountOnDisk(m->spool_path()), 2u);
  disk.error = 0;
  EXPECT_TRUE(m->Fsync().ok());
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), NumpyU16(5));
  EXPECT_TRUE(m->Fsync().ok());
}

TEST(GrowingMember, AClosingWriterAndFinalizeRetryAFailedCountRewrite) {
  Fixture f;
  FlakyHeaderWrites disk;
  auto m = f.Create("close.npy", U16Layout(), disk.Fn());
  const size_t h = HeaderLength(NumpyU16(0));
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  disk.error = EIO;
  ASSERT_TRUE(WriteAt(*m, w, 48, U16Frames(2, 1, 12)).ok());
  disk.error = 0;
  m->EndWrite(&w);
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), NumpyU16(3)) << "rewritten at close";
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  disk.error = EIO;
  ASSERT_TRUE(WriteAt(*m, w, h + 3 * 24, U16Frames(3, 1, 12)).ok());
  disk.error = 0;
  auto fin = m->PrepareFinalize();
  ASSERT_TRUE(fin.ok()) << fin.status().message();
  EXPECT_EQ(ReadFileOrDie(m->spool_path()), NumpyU16(4)) << "rewritten at finalize";
}

TEST(GrowingMember, ResumeAfterAFailedCountRewriteKeepsEveryCompleteFrame) {
  Fixture f;
  FlakyHeaderWrites disk;
  auto m = f.Create("crash.npy", U16Layout(), disk.Fn());
  WriterSession w;
  ASSERT_TRUE(m->BeginWrite(&w, false).ok());
  ASSERT_TRUE(WriteAt(*m, w, 0, U16Frames(0, 2, 12)).ok());
  disk.error = EIO;
  // Three more frames and part of a fourth; then the daemon dies before any retry.
  ASSERT_TRUE(WriteAt(*m, w, 48, U16Frames(2, 4, 12).substr(0, 3 * 24 + 7)).ok());
  const std::string copy = f.dir.Join("copy");
  std::filesystem::copy_file(m->spool_path(), copy);
  EXPECT_EQ(CountOnDisk(copy), 2u);
  auto r = f.Resume("crash.npy", copy);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->frame_count(), 5u) << "counted from the file size, not from the stale header";
  EXPECT_EQ(ReadVisible(*r), NumpyU16(5));
  EXPECT_EQ(ReadFileOrDie(copy), NumpyU16(5)) << "partial frame cut, header recounted";
}

}  // namespace
}  // namespace npzfs
