module strata.dev/bench/nullextender

go 1.26
