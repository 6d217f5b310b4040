struct Inner { 1: i32 a, 2: double d, 3: string s }
struct Args {
  1: bool b, 2: i8 y, 3: i16 h, 4: i32 i, 5: i64 l, 6: double d, 7: string s, 8: binary bin,
  9: list<bool> lb, 10: set<string> ss, 11: set<double> sd, 12: map<string, i32> msi,
  13: map<double, string> mds, 14: Inner inner, 15: set<i64> sl, 16: map<binary, i32> mbi,
  17: list<Inner> li
}
