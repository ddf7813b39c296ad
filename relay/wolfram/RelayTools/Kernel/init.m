(* Loaded by Needs["RelayTools`"]. RelayConfig.wl, written by `relay wolfram install`, sets
   $RelayCommand to the relay executable that installed it. *)
Quiet[Get[FileNameJoin[{DirectoryName[DirectoryName[$InputFileName]], "RelayConfig.wl"}]]];
Get["RelayTools`RelayTools`"]
