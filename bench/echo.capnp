@0xd6b1e0c7a9f34e21;
# The baseline for the benchmarks: the cheapest possible call.
interface Echo {
  echo @0 (data :Data) -> (data :Data);
}
