// The interop matrix's own service (tests/test_interop.py): every Thrift type, echoed back.
// Backends: tests/interop_backend.py (stock Apache Thrift Python and thriftpy2).
// Clients: stock Python and thriftpy2 (tests/interop_support.py), C++ and Node.js
// (tests/interop/). Generated code is never committed: the tests run the compiler.

namespace py interop_gen
namespace cpp interop_gen
namespace js interop_gen

enum Color {
  RED = 1,
  GREEN = 2,
  BLUE = 300,
}

struct Point {
  1: i32 x,
  2: i32 y,
}

struct Scalars {
  1: bool flag,
  2: i8 tiny,
  3: i16 small,
  4: i32 medium,
  5: i64 large,
  6: double real,
  7: string text,
  8: binary data,
  9: Color color,
}

union Shape {
  1: Point point,
  2: string label,
  3: i64 code,
}

struct Everything {
  1: Scalars scalars,
  2: list<i32> ints,
  3: set<string> tags,
  4: map<string, i64> counts,
  5: list<map<i32, set<string>>> nested,
  6: map<string, list<Point>> paths,
  7: Shape shape,
  8: optional string note,
  9: optional Point maybe,
  10: list<double> reals,
  11: list<binary> blobs,
  12: list<list<Color>> palette,
}

exception NotFound {
  1: string item,  // not "what": C++ exceptions have what()
  2: i32 code,
}

exception Invalid {
  1: string reason,
}

service Interop {
  void ping(),
  bool echoBool(1: bool v),
  i8 echoByte(1: i8 v),
  i16 echoI16(1: i16 v),
  i32 echoI32(1: i32 v),
  i64 echoI64(1: i64 v),
  double echoDouble(1: double v),
  string echoString(1: string v),
  binary echoBinary(1: binary v),
  Color echoEnum(1: Color v),
  Scalars echoScalars(1: Scalars v),
  Shape echoUnion(1: Shape v),
  Everything echoEverything(1: Everything v),
  list<i64> echoList(1: list<i64> v),
  set<string> echoSet(1: set<string> v),
  map<string, list<i32>> echoMap(1: map<string, list<i32>> v),

  // code 1: NotFound; 2: Invalid; 3: an undeclared error (TApplicationException); else "ok".
  string fail(1: i32 code) throws (1: NotFound notFound, 2: Invalid invalid),

  oneway void fire(1: string token),
  // How many fire(token) calls the backend has received.
  i32 fired(1: string token),

  // size bytes (i % 251 for i in 0..size-1); and the length of a blob sent up.
  binary big(1: i32 size),
  i32 sizeOf(1: binary blob),
}
