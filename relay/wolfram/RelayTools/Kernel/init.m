(* Loaded by Needs["RelayTools`"]. RelayConfig.wl, written by `relay wolfram install`, sets
   $RelayCommand to the relay executable that installed it. *)
Quiet[Get[FileNameJoin[{DirectoryName[$InputFileName, 2], "RelayConfig.wl"}]]];
Get["RelayTools`RelayTools`"]
